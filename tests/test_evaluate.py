"""Evaluator: postprocess parity with PyTorch, exact oracle models, JSON output."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs import smoke
from ovsnet_jax import aot, checkpointing, evaluate, metrics, sharding, train
from ovsnet_jax.input import IGNORE_LABEL, layouts, shapes, transforms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_postprocess(scores, image_size, orig_size):
  """detectron2 sem_seg_postprocess on (Hp, Wp, K) numpy scores -> (H, W, K)."""
  t = torch.from_numpy(np.array(scores)).permute(2, 0, 1)[None]
  t = t[:, :, :image_size[0], :image_size[1]]
  t = F.interpolate(t, size=tuple(orig_size), mode='bilinear', align_corners=False)
  return t[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize('image_size,orig_size', [((40, 60), (30, 45)), ((24, 30), (50, 61)),
                                                    ((64, 33), (64, 33)), ((7, 64), (20, 3))])
def test_resize_to_original_matches_sem_seg_postprocess(image_size, orig_size):
  scores = np.random.default_rng(0).normal(size=(64, 64, 5)).astype(np.float32)
  ref = torch_postprocess(scores, image_size, orig_size)
  out = evaluate.resize_to_original(jnp.asarray(scores), jnp.asarray(image_size), jnp.asarray(orig_size),
                                    (64, 72))
  np.testing.assert_allclose(np.asarray(out)[:orig_size[0], :orig_size[1]], ref, atol=2e-6)


def test_predict_labels_chunked_argmax_matches_torch():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(2, 32, 64, 11)).astype(np.float32)
  image_size, orig_size = np.array([[30, 60], [32, 20]]), np.array([[45, 90], [16, 10]])
  for chunk in (3, 11, 64):
    pred = np.asarray(jax.jit(evaluate.predict_labels, static_argnums=(3, 4))(
        scores, image_size, orig_size, (48, 96), chunk))
    for b in range(2):
      ref = torch_postprocess(scores[b], image_size[b], orig_size[b]).argmax(-1)
      np.testing.assert_array_equal(pred[b, :orig_size[b][0], :orig_size[b][1]], ref)


class OracleReader:
  """Shapes val (semantic) whose image channel 0 holds the label + 1 (an exactly readable image)."""

  def __init__(self, n):
    self.ds = shapes.ShapesSemantic(shapes.ShapesPanoptic('val', n, 64))
    self.class_names = self.ds.class_names

  def __len__(self):
    return len(self.ds)

  def __getitem__(self, i):
    ex = self.ds[i]
    image = np.repeat((ex['sem_seg'] + 1).astype(np.uint8)[..., None], 3, -1)
    return {'image': image, 'sem_seg': ex['sem_seg'], 'file_name': ex['file_name']}


def oracle_fn(shift):
  def semantic_fn(params, images, text):  # (B, Hp, Wp, 3) -> (B, Hp, Wp, K)
    k = text['embeds'].shape[0]
    label = (images[..., 0].astype(jnp.int32) - 1 + shift) % k
    return jax.nn.one_hot(label, k) * params
  return semantic_fn


def _config():
  c = smoke.get_config()
  c.eval.batch_size, c.eval.max_images = 2, 5
  return c


def text_fn(names):
  return {'embeds': np.zeros((len(names), 1, 4), np.float32), 'valid': np.ones((len(names), 1), bool)}


def test_exact_model_gives_100_and_wrong_model_gives_0(tmp_path):
  config, mesh = _config(), sharding.make_mesh(jax.devices()[:1])
  reader = OracleReader(7)
  res = evaluate.evaluate_dataset(config, oracle_fn(0), jnp.float32(1.0), text_fn, mesh,
                                  reader=reader, progress=False)
  assert res['info'] == {'dataset': 'shapes', 'num_images': 5, 'eval_size': [64, 64]}
  for key in ('mIoU', 'pACC', 'mACC', 'fwIoU'):
    assert res[key] == pytest.approx(100.0), key
  assert set(res) >= {'mIoU-seen', 'mIoU-unseen', 'hIoU'}
  wrong = evaluate.evaluate_dataset(config, oracle_fn(1), jnp.float32(1.0), text_fn, mesh,
                                    reader=reader, progress=False)
  assert wrong['mIoU'] == 0.0 and wrong['pACC'] == 0.0
  path = tmp_path / 'out' / 'res.json'
  evaluate.write_results(res, str(path))
  loaded = json.loads(path.read_text())
  assert loaded['mIoU'] == pytest.approx(100.0)
  absent = [n for n, v in res['IoU'].items() if np.isnan(v)]
  assert all(loaded['IoU'][n] is None for n in absent)
  table = evaluate.format_table(res, per_class=True)
  assert 'mIoU' in table and 'circle' in table
  # The chance row depends on the ground truth only (metrics.chance_metrics): both models get the same.
  assert res['chance'] == wrong['chance'] and 0 < res['chance']['mIoU'] < 100
  chance_row = table.splitlines()[3]
  assert chance_row.endswith('| chance') and f"{res['chance']['mIoU']:11.2f}" in chance_row


def test_resized_evaluation_matches_the_reference_path():
  config, mesh = _config(), sharding.make_mesh(jax.devices()[:1])
  config.data.eval_min_size, config.data.eval_max_size = 96, 200  # 64 -> 96: a real resize
  reader = OracleReader(3)
  res = evaluate.evaluate_dataset(config, oracle_fn(0), jnp.float32(1.0), text_fn, mesh,
                                  reader=reader, progress=False)
  # The oracle reads a bilinearly resized label image back: exact away from class boundaries.
  assert 90.0 < res['pACC'] < 100.0
  # Reference: detectron2's path in NumPy/PyTorch, image by image.
  k = len(reader.class_names)
  conf = np.zeros((k, k), np.int64)
  for i in range(3):
    ex = transforms.eval_resize(reader[i]['image'], reader[i]['sem_seg'], min_size=96, max_size=200,
                                pad_value=config.model.pixel_mean)
    scores = np.asarray(oracle_fn(0)(1.0, jnp.asarray(ex['image'][None]), text_fn(reader.class_names)))[0]
    pred = torch_postprocess(scores, ex['image_size'], ex['orig_size']).argmax(-1)
    gt = ex['sem_seg']
    keep = gt != IGNORE_LABEL
    conf += np.bincount(gt[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
  ref = metrics.segmentation_metrics(conf)
  assert res['pACC'] == pytest.approx(ref['pACC'], rel=1e-12)
  assert res['mIoU'] == pytest.approx(ref['mIoU'], rel=1e-12)


def test_launch_eval_end_to_end_on_ade150_layout(tmp_path, tiny_clip_dir):
  """launch/eval.py on a generated ADE20K-150 layout with a tiny random OVSNet (the path, not the numbers)."""
  d2, out = tmp_path / 'd2', tmp_path / 'res.json'
  layouts.write_ade150(str(d2), num_images=3, size=(40, 56))
  cmd = [sys.executable, 'launch/eval.py', '--config=configs/smoke.py', f'--clip={tiny_clip_dir}',
         '--dataset=ade150', f'--data_root={d2}', '--max_images=2', f'--out={out}', '--per_class',
         '--config.eval.batch_size=1', '--config.data.eval_size_from_dataset=False',
         '--config.data.eval_min_size=64', '--config.data.eval_max_size=96']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'mIoU' in proc.stdout and 'wall' in proc.stdout  # summary + per-class rows ('wall' = ADE class 0)
  res = json.loads(out.read_text())
  assert res['info'] == {'dataset': 'ade150', 'num_images': 2, 'eval_size': [64, 96]}
  assert len(res['IoU']) == 150 and 0.0 <= res['mIoU'] <= 100.0


def test_load_params_reads_the_trainers_checkpoints(tmp_path):
  params = {'class_head': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3)}, 'logit_scale': np.float32(2.5)}
  state = train.TrainState(step=jnp.int32(7), params=params, opt_state={'mu': np.zeros(3, np.float32)})
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'checkpoints'), every=1, keep=2, async_save=False)
  ckpt.save(3, state, jax.random.PRNGKey(0), {'next_index': 4}, force=True)
  ckpt.save(7, state.replace(params={**params, 'logit_scale': np.float32(3.5)}), jax.random.PRNGKey(0),
            {'next_index': 8}, force=True)  # the data state is required (issue 11)
  ckpt.close()
  for path in (tmp_path, tmp_path / 'checkpoints', tmp_path / 'checkpoints' / '7'):
    loaded = evaluate.load_params(str(path))
    np.testing.assert_array_equal(loaded['class_head']['kernel'], params['class_head']['kernel'])
    assert float(loaded['logit_scale']) == 3.5  # the latest step
  assert float(evaluate.load_params(str(tmp_path / 'checkpoints' / '3'))['logit_scale']) == 2.5
  with pytest.raises(FileNotFoundError, match=f'{tmp_path / "empty"}: no checkpoint found'):
    evaluate.load_params(str(tmp_path / 'empty'))


class SizedReader:
  """Semantic reader of all-class-0 images of one size (H, W)."""

  class_names = shapes.class_names('val')

  def __init__(self, n, size):
    self.n, self.size = n, size

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {'image': np.zeros(self.size + (3,), np.uint8), 'sem_seg': np.zeros(self.size, np.int32),
            'file_name': f'{i}.png'}


def test_default_padding_is_fcclips_multiple_of_32():
  """40x56 -> ResizeShortestEdge(64, 128) = 64x90: FC-CLIP pads it to 64x96, the canvas to 64x128.

  The stand-in model answers class 0 only when its input is 96 wide, so pACC shows the padding."""
  config, mesh = _config(), sharding.make_mesh(jax.devices()[:1])
  config.data.eval_max_size = 128

  def semantic_fn(params, images, text):
    k = text['embeds'].shape[0]
    return jnp.broadcast_to(jax.nn.one_hot(int(images.shape[2] != 96), k), images.shape[:3] + (k,)) * params

  run = lambda c: evaluate.evaluate_dataset(c, semantic_fn, jnp.float32(1.0), text_fn, mesh,
                                            reader=SizedReader(2, (40, 56)), progress=False)['pACC']
  assert run(config) == pytest.approx(100.0)
  config.eval.pad_mode = 'orientation'
  assert run(config) == 0.0


def test_evaluation_runs_ovsnet_in_eval_compute_dtype():
  """A bfloat16-trained model is evaluated in float32 (eval.compute_dtype), as detectron2 does."""
  from ovsnet_jax.models import ovsnet  # pylint: disable=g-import-not-at-top
  config = smoke.get_config('tiny')
  config.model.compute_dtype = 'bfloat16'
  model = ovsnet.build_model(config)
  params = jax.eval_shape(lambda: ovsnet.init_params(config, jax.random.PRNGKey(0), image_size=32))
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  text = {'embeds': jax.ShapeDtypeStruct((3, 1, 32), jnp.float32), 'valid': jax.ShapeDtypeStruct((3, 1), bool)}
  dtypes = lambda fn: str(jax.make_jaxpr(fn)(params, images, text))
  trained = evaluate.ovsnet_semantic_fn(model)
  assert 'bf16' in dtypes(trained)
  assert config.eval.compute_dtype == 'float32'
  assert 'bf16' not in dtypes(evaluate.with_eval_precision(trained, config))
  config.eval.compute_dtype = 'bfloat16'
  assert 'bf16' in dtypes(evaluate.with_eval_precision(trained, config))
  config.eval.compute_dtype = 'fp8'
  with pytest.raises(ValueError, match=r"config.eval.compute_dtype: expected one of .*, got 'fp8'"):
    evaluate.with_eval_precision(trained, config)
  other = oracle_fn(0)
  assert evaluate.with_eval_precision(other, smoke.get_config()) is other  # other models are left as they are


def test_program_that_cannot_fit_is_refused_before_it_runs():
  x = jnp.ones((256, 256), jnp.float32)
  compiled = jax.jit(lambda a: jnp.tanh(a @ a.T) @ a).lower(x).compile()
  analysis = compiled.memory_analysis()
  need = analysis.temp_size_in_bytes + analysis.output_size_in_bytes
  assert need >= 256 * 256 * 4  # at least the (256, 256) float32 output
  assert aot.check_program_fits(compiled, 'demo', 'lower it.', available=need, devices_sharing=1) == need
  assert aot.check_program_fits(compiled, 'demo', 'x', available=2 * need, devices_sharing=2) == 2 * need
  with pytest.raises(aot.DoesNotFit, match=r'demo needs 0\.0 GiB .* but only 0\.0 GiB are available on cpu; '
                     r'lower it\.'):
    aot.check_program_fits(compiled, 'demo', 'lower it.', available=need - 1, devices_sharing=1)
  assert aot.available_memory(jax.devices('cpu')[0]) > 0  # /proc/meminfo's MemAvailable
