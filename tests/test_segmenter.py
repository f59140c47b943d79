"""FC-CLIP checkpoint files -> Segmenter -> pictures, batched segmentation and the web demo's HTTP API.

One tiny OVSNet (configs/smoke.py:tiny, random weights) is written as FC-CLIP's detectron2 files
by torch.save and read back; every test shares its compiled programs (one image bucket).
"""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from PIL import Image

from configs import smoke
from ovsnet_jax import cli
from ovsnet_jax import inference
from ovsnet_jax import loading
from ovsnet_jax import segmenter
from ovsnet_jax.convert import export_torch
from ovsnet_jax.convert import fcclip_checkpoint
from ovsnet_jax.models import clip
from ovsnet_jax.models import ovsnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = 'cat,dog|puppy,grass,sky'
SIZE = dict(min_size=64, max_size=96)


def fill(shapes, rng):
  """Random params for a ShapeDtypeStruct tree: kernels ~ N(0, 1/fan_in), norm scales ~1, biases small."""
  def one(path, x):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name == 'scale':
      return (1 + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)
    fan_in = int(np.prod(x.shape[:-1])) if len(x.shape) > 1 else 1
    return (rng.standard_normal(x.shape) / np.sqrt(max(fan_in, 1)) * (0.1 if name == 'bias' else 1)).astype(
        np.float32)
  return jax.tree_util.tree_map_with_path(one, shapes)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """(config, params, clip_params, state, paths {'tensors', 'numpy'}) of a random tiny model."""
  config = smoke.get_config('tiny')
  config.model.ensemble.enabled = True  # exercise FC-CLIP's ensemble path
  rng = np.random.default_rng(0)
  params = fill(ovsnet.param_shapes(config), rng)  # traced, not compiled: cheap
  clip_params = {'visual': params['clip_visual'], 'logit_scale': params['clip_logit_scale'],
                 'text': fill(clip.param_shapes('test_tiny')['text'], rng)}
  state = export_torch.export(params, config, clip_params)
  state['criterion.empty_weight'] = np.ones(12, np.float32)  # FCCLIP's loss buffer
  root = tmp_path_factory.mktemp('fcclip')
  paths = {'tensors': str(root / 'model_final.pth'), 'numpy': str(root / 'model_zoo.pkl')}
  # detectron2 Checkpointer.save: the model state plus optimizer, scheduler, iteration.
  torch.save({'model': {k: torch.from_numpy(v) for k, v in state.items()},
              'optimizer': {'state': {0: {'exp_avg': torch.zeros(3)}}, 'param_groups': [{'lr': 1e-4, 'params': [0]}]},
              'scheduler': {'last_epoch': 7, '_last_lr': [1e-4]}, 'iteration': 1234}, paths['tensors'])
  # detectron2 model-zoo style: numpy arrays (pickled ndarrays need the numpy allow-list).
  torch.save({'model': dict(state), '__author__': 'Detectron2 Model Zoo', 'matching_heuristics': True},
             paths['numpy'])
  return config, params, clip_params, state, paths


@pytest.fixture(scope='module')
def seg(tiny, tmp_path_factory):
  config, _, _, _, paths = tiny
  return segmenter.Segmenter.load(paths['tensors'], config=config,
                                  text_cache=str(tmp_path_factory.mktemp('text')), bucket=32, batch_size=2,
                                  **SIZE)


def _equal_trees(a, b):
  fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (p, x), (_, y) in zip(fa, fb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(p))


@pytest.mark.parametrize('kind', ['tensors', 'numpy'])
def test_detectron2_files_load_exactly(tiny, kind):
  config, params, clip_params, _, paths = tiny
  got, got_clip = fcclip_checkpoint.load(paths[kind], config)
  _equal_trees(got, jax.device_get(params))
  _equal_trees(got_clip, jax.device_get(clip_params))  # FCCLIP's backbone.clip_model holds the whole CLIP


def test_code_in_a_checkpoint_is_never_unpickled(tmp_path):
  path = str(tmp_path / 'evil.pth')
  torch.save({'model': {'x': torch.zeros(1)}, 'hook': subprocess.Popen}, path)  # a global outside the allow-list
  with pytest.raises(ValueError, match=r'could not read checkpoint .*evil.pth.*never loaded.*Unsupported global') as e:
    fcclip_checkpoint.read_state(path)
  assert 'weights_only' not in str(e.value)  # no advice to load it with weights_only=False (runs its code)


def test_checkpoint_errors_name_file_and_fix(tiny, tmp_path):
  config, _, _, state, _ = tiny
  other = smoke.get_config('tiny')
  other.model.decoder.num_queries = 8
  with pytest.raises(ValueError, match=r"is CLIP 'test_tiny' with 16 queries, the config 'test_tiny' with 8"):
    fcclip_checkpoint.check_config({k: v.shape for k, v in state.items()}, other, 'f.pth')
  broken = {k: v for k, v in state.items() if 'mask_embed' not in k}
  path = str(tmp_path / 'broken.pth')
  torch.save({'model': {k: torch.from_numpy(v) for k, v in broken.items()}}, path)
  with pytest.raises(ValueError, match=r"broken.pth: missing tensor 'sem_seg_head.predictor.mask_embed"):
    fcclip_checkpoint.load(path, config)


@pytest.mark.parametrize('config_name,variant,queries', [('ovsnet_large', 'convnext_large_d_320', 250)])
def test_released_layouts_are_recognised(config_name, variant, queries):
  """FC-CLIP-L's (fcclip_cocopan.pth) key/shape layout -> variant, queries (shapes only; the ConvNeXt-B
  layout goes through the same code and was checked once: tracing a full model costs ~30 s of CPU)."""
  config = loading.load_config(f'configs/{config_name}.py:fusion=none,pc=false')
  shapes = export_torch.torch_shapes(ovsnet.param_shapes(config))
  assert fcclip_checkpoint.infer_layout(shapes, 'f') == (variant, queries)
  fcclip_checkpoint.check_config(shapes, config, 'f')


def test_segmenter_from_file_equals_direct_inference(tiny, seg):
  config, params, _, _, _ = tiny
  assert seg.config.model.fusion == config.model.fusion
  image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
  class_names, _ = segmenter.resolve(CLASSES)
  text = seg.loaded.classify(class_names)
  ref = inference.segment(params, image, class_names, model=ovsnet.build_model(config), text=text, **SIZE)
  r = seg(image, CLASSES)
  assert r.labels.shape == image.shape[:2] and np.ptp(r.confidence) > 0
  np.testing.assert_array_equal(r.labels, ref['labels'])
  np.testing.assert_allclose(r.confidence, ref['confidence'], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(r.class_scores, ref['class_scores'], rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(r.seen, ref['seen'])


def test_size_buckets_share_one_program_and_match_single_images(seg):
  """Three sizes in one bucket, batched: the same results as one image per batch (one program)."""
  images = [np.random.default_rng(i).integers(0, 256, s, dtype=np.uint8) for i, s in
            enumerate([(50, 70, 3), (45, 80, 3), (52, 66, 3)])]
  shapes = {inference.bucket_shapes(x.shape[:2], SIZE['min_size'], SIZE['max_size'], 32)[1:] for x in images}
  assert len(shapes) == 1  # (canvas, output canvas) shared
  batched = seg.segment_many(images, CLASSES)  # batch_size 2: [0, 1], [2, 2 (padding)]
  for image, b in zip(images, batched):
    single = seg(image, CLASSES)  # alone in its batch
    np.testing.assert_array_equal(b.labels, single.labels)
    np.testing.assert_allclose(b.class_scores, single.class_scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b.confidence, single.confidence, rtol=1e-5, atol=1e-7)


def test_result_files(seg, tmp_path):
  image = np.random.default_rng(5).integers(0, 256, (50, 70, 3), dtype=np.uint8)
  image_path = str(tmp_path / 'in.png')
  Image.fromarray(image).save(image_path)
  r = seg(image_path, CLASSES)
  out = r.save(str(tmp_path / 'out'), stem='in_')
  label_png = Image.open(out['labels'])
  assert label_png.mode == 'P'
  np.testing.assert_array_equal(np.asarray(label_png), r.labels)  # pixel value = class index
  pal = np.array(label_png.getpalette()[:3 * 4]).reshape(4, 3)
  np.testing.assert_array_equal(pal, r.colors)
  scores = json.load(open(out['scores']))
  assert [c['name'] for c in scores['classes']] == ['cat', 'dog', 'grass', 'sky']
  assert scores['classes'][1]['synonyms'] == ['dog', 'puppy']
  np.testing.assert_allclose([c['score'] for c in scores['classes']], r.class_scores, rtol=1e-6)
  shares = {n: 100.0 * (r.labels == k).mean() for k, n in enumerate(r.names)}
  for c in scores['classes']:
    assert c['area_percent'] == pytest.approx(shares[c['name']])
  overlay = np.asarray(Image.open(out['overlay']))
  assert overlay.shape[0] >= 50 and overlay.shape[1] > 70  # legend to the right


def test_vocabulary_typo_is_an_error_not_a_class(seg):
  with pytest.raises(ValueError, match=r"unknown vocabulary 'ade151'.*did you mean 'ade150'"):
    seg(np.zeros((40, 40, 3), np.uint8), 'ade151')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_web_demo_http_api(seg, tmp_path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from gradio_client import Client, handle_file  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('ovsnet_app', os.path.join(ROOT, 'launch', 'app.py'))
  app_module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(app_module)
  image = np.random.default_rng(7).integers(0, 256, (50, 70, 3), dtype=np.uint8)
  path = str(tmp_path / 'upload.png')
  Image.fromarray(image).save(path)
  app = app_module.build_app(seg)
  port = _free_port()
  app.launch(server_name='127.0.0.1', server_port=port, prevent_thread_lock=True, quiet=True)
  try:
    client = Client(f'http://127.0.0.1:{port}/', verbose=False)
    overlay_file, table = client.predict(handle_file(path), CLASSES, False, api_name='/segment')
    expected = seg(image, CLASSES)
    np.testing.assert_array_equal(np.asarray(Image.open(overlay_file).convert('RGB')),
                                  np.asarray(expected.overlay()))
    rows = table['data'] if isinstance(table, dict) else table
    assert [row[0] for row in rows] == list(expected.areas())
    with pytest.raises(Exception, match="unknown vocabulary 'coco'"):
      client.predict(handle_file(path), 'coco', False, api_name='/segment')
  finally:
    app.close()


@pytest.mark.parametrize('args,message', [
    (['launch/segment.py', '--images=/nonexistent/*.jpg', '--classes=cat,dog', '--out=/tmp/x'],
     "error: --images '/nonexistent/*.jpg': no files match"),
    (['launch/segment.py', '--video=/nonexistent/clip.mp4', '--classes=cat,dog', '--out=/tmp/x'],
     "error: --video '/nonexistent/clip.mp4' does not exist."),
    (['launch/demo.py', '--image=x.jpg', '--classes=ADE150'], "error: unknown vocabulary 'ADE150'"),
])
def test_launchers_report_bad_input_in_one_line(args, message):
  proc = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 2, proc.stderr
  assert message in proc.stderr and 'Traceback' not in proc.stderr


def test_video_frames_stream_into_a_folder(seg, tmp_path):
  rng = np.random.default_rng(3)
  frames = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(5)]
  video = str(tmp_path / 'clip.gif')
  # A lossless GIF: 8 grey levels fit its palette, so decoded frames equal the written ones.
  frames = [(f // 32 * 32).astype(np.uint8) for f in frames]
  frames = [np.repeat(f[..., :1], 3, axis=-1) for f in frames]
  Image.fromarray(frames[0]).save(video, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]],
                                  duration=40, loop=0)
  stream = segmenter.video_frames(video, every=2)
  names, decoded = zip(*stream)
  assert names == ('clip_000000', 'clip_000002', 'clip_000004')
  for got, want in zip(decoded, frames[::2]):
    np.testing.assert_array_equal(got, want)
  out = str(tmp_path / 'out')
  count = segmenter.segment_to_folder(seg, segmenter.video_frames(video, every=2), CLASSES, out, group=2)
  assert count == 3
  written = sorted(os.listdir(out))
  assert 'classes.json' in written and 'clip_000004_labels.png' in written and len(written) == 1 + 3 * 3
  labels = np.asarray(Image.open(os.path.join(out, 'clip_000002_labels.png')))
  np.testing.assert_array_equal(labels, seg(frames[2], CLASSES).labels)
  with pytest.raises(FileNotFoundError, match='missing.mp4'):
    segmenter.video_frames(str(tmp_path / 'missing.mp4'))
  (tmp_path / 'broken.gif').write_bytes(b'GIF89a not really')
  with pytest.raises(cli.UserError, match='broken.gif.*cannot decode'):
    list(segmenter.video_frames(str(tmp_path / 'broken.gif')))
