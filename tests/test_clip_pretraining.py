"""The shapes world's CLIP: its corpus, its contrastive loss, a short pretraining that must reach
zero-shot accuracy clearly above chance on held-out images (seen and unseen classes), its
checkpoint directory (read by the converted-CLIP loader), and the smoke path through
`--config.clip_checkpoint` with it, including a rerun of the finished workdir.

One short pretraining (`SHORT`) is shared by the tests through a session fixture.
"""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovsnet_jax import clip_pretraining
from ovsnet_jax import metrics
from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.input import shapes
from ovsnet_jax.input import shapes_corpus
from ovsnet_jax.models import clip
from ovsnet_jax.models import clip_convnext
from ovsnet_jax.text import classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The short run uses the unpatterned world (shapes alone): there 300 steps at batch 64 learn several
# classes, while on the default patterned world the tower is still leaving its plateau at 300 steps
# (measured 2026-11-30: zero-shot seen 34.4%, unseen 2.0%). The default world's CLIP is measured in
# the README; this test checks the recipe learns, on the same code path.
SHORT = clip_pretraining.Settings(num_images=2000, batch_size=64, steps=300, warmup_steps=30, patterned=False)


@pytest.fixture(scope='session')
def short_clip(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('clip_cache'))
  logs = []
  out = clip_pretraining.ensure_pretrained(SHORT, root, log=logs.append)
  with open(clip_pretraining.report_path(out)) as f:
    return {'dir': out, 'root': root, 'report': json.load(f), 'logs': logs}


def test_corpus_is_deterministic_and_captions_name_what_is_drawn():
  ds = shapes_corpus.ShapesCaptions('train', 50, 64, seed=3)
  again = shapes_corpus.ShapesCaptions('train', 50, 64, seed=3)
  for i in (0, 17, 49):
    np.testing.assert_array_equal(ds[i]['image'], again[i]['image'])
    assert ds[i]['caption'] == again[i]['caption']
  assert not np.array_equal(ds[0]['image'], shapes_corpus.ShapesCaptions('test', 50, 64, seed=3)[0]['image'])
  synonyms = {name: (name, *syns) for name, syns, _ in shapes.THINGS + shapes.STUFF}
  kinds = set()
  for i in range(50):
    ex = ds[i]
    kinds.add(ex['kind'])
    for cls in ex['things'] + (ex['stuff'] if ex['kind'] == 'stuff' else []):  # stuff behind things: optional
      assert any(n in ex['caption'] for n in synonyms[cls]), (cls, ex['caption'])
  assert kinds == {'thing', 'stuff', 'scene'}
  with pytest.raises(IndexError, match='out of range'):
    ds[50]


def test_colour_does_not_give_the_class_away():
  """Mean colour of each thing class over many instances is the same grey-ish value (random colours)."""
  ds = shapes.ShapesPanoptic('val', 150, 64)
  means = {}
  for i in range(len(ds)):
    ex = ds[i]
    for seg in ex['segments']:
      means.setdefault(seg['category'], []).append(ex['image'][ex['segment_ids'] == seg['id']].mean(0))
  per_class = np.stack([np.mean(v, 0) for k, v in sorted(means.items()) if len(v) >= 20])  # (K', 3)
  assert len(per_class) >= 10
  assert np.abs(per_class - 127.5).max() < 30, per_class.round()


def test_each_thing_wears_its_class_pattern_and_flips_map_patterns_to_themselves():
  size = 64
  patterns = {p: shapes.pattern_mix(p, np.random.default_rng(7), size) for p in set(shapes.THING_PATTERNS.values())}
  assert not patterns['solid'].any()
  assert (patterns['hstripes'] == patterns['hstripes'][:, :1]).all()  # constant along each row
  assert (patterns['vstripes'] == patterns['vstripes'][:1]).all()  # constant along each column
  for name, mix in patterns.items():
    assert name == 'solid' or 0.1 < mix.mean() < 0.9, (name, mix.mean())
  # A flip is the same pattern at another phase: its row/column autocorrelation profile is unchanged, and
  # it differs from every other class's pattern more than from its own pattern at other phases.
  def profile(m):  # (2, L): mean agreement of m with itself shifted along x and along y
    return np.stack([[np.mean(m[:, d:] == m[:, :size - d]) for d in range(1, 12)],
                     [np.mean(m[d:] == m[:size - d]) for d in range(1, 12)]])
  for name, mix in patterns.items():
    for flipped in (mix[:, ::-1], mix[::-1]):
      np.testing.assert_allclose(profile(flipped), profile(mix), atol=0.03, err_msg=name)
  with pytest.raises(ValueError, match="pattern_mix: unknown pattern 'zebra'"):
    shapes.pattern_mix('zebra', np.random.default_rng(0), 8)
  # In the rendered world a patterned thing shows two colours; patterned=False draws one (+ noise).
  for patterned, min_spread in ((True, 20.0), (False, 0.0)):  # colours >= MIN_CONTRAST apart
    ds = shapes.ShapesPanoptic('val', 12, 64, patterned=patterned)
    spreads = []
    for i in range(len(ds)):
      ex = ds[i]
      for seg in ex['segments']:
        inside = ex['segment_ids'] == seg['id']
        if ds.class_names[seg['category']][0] in ('square', 'triangle', 'hexagon') and inside.sum() > 60:
          spreads.append(ex['image'][inside].astype(float).std(0).max())
    assert spreads and (min(spreads) > min_spread if patterned else max(spreads) < 8), (patterned, spreads)


def test_contrastive_loss_matches_a_numpy_reference_with_repeated_captions():
  rng = np.random.default_rng(0)
  img, txt = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
  ids = np.array([0, 1, 0, 2, 1])
  got = float(clip_pretraining.contrastive_loss(jnp.asarray(img), jnp.asarray(txt), jnp.log(10.0), jnp.asarray(ids)))
  i = img / np.linalg.norm(img, axis=1, keepdims=True)
  t = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  logits = 10.0 * i @ t.T
  target = (ids[:, None] == ids[None]).astype(float)
  target /= target.sum(1, keepdims=True)
  ce = lambda z: -(target * (z - np.log(np.exp(z).sum(1, keepdims=True)))).sum(1).mean()
  np.testing.assert_allclose(got, 0.5 * (ce(logits) + ce(logits.T)), rtol=1e-5)


def test_short_pretraining_is_clearly_above_chance_zero_shot(short_clip):
  """A short run (300 steps) learns the classes it sees most; the full recipe also gets the unseen
  ones above chance (README figures), which this short run does not yet."""
  zs = short_clip['report']['zero_shot']
  is_thing = [i < len(shapes.THINGS) for i in range(len(shapes.THINGS) + len(shapes.STUFF))]
  chance = np.array([zs['chance_things'] if t else zs['chance_stuff'] for t in is_thing])  # (K,)
  acc = np.array(list(zs['per_class'].values()))  # (K,) in class order
  seen = np.array(shapes.seen_mask('val'))
  assert acc[seen].mean() > 2 * chance[seen].mean(), zs
  assert acc.mean() > 1.5 * chance.mean(), zs


def test_segment_classifier_pools_res5_inside_the_mask_like_the_image_embedding():
  """The dense zero-shot's classification of a mask, against the CLIP's own path computed by hand:
  the whole image's mask is its image embedding (global res5 average), the left half's is the head
  of the left res5 column's mean, a mask smaller than half a res5 cell binarises empty (zero)."""
  params = jax.tree.map(np.asarray, clip.init_params('test_tiny', jax.random.PRNGKey(3), 64))
  names = shapes.class_names('val')
  image = np.random.default_rng(0).uniform(0, 255, (64, 64, 3)).astype(np.float32)
  masks = np.zeros((3, 64, 64), np.float32)
  masks[0] = 1
  masks[1, :, :32] = 1
  masks[2, 10:18, 40:48] = 1  # an eighth of a 32-px cell's side on each axis
  got = clip_pretraining.segment_classifier('test_tiny', params, clip_pretraining.class_text('test_tiny', params))(
      image, masks)
  visual = clip_convnext.CLIPVisual('test_tiny')
  v = {'params': params['visual']}
  res5 = np.asarray(visual.apply(v, clip_pretraining.normalize(jnp.asarray(image[None])))['res5'])[0]  # (2, 2, C5)
  assert res5.shape[:2] == (2, 2)
  pooled = np.stack([res5.mean((0, 1)), res5[:, 0].mean(0), np.zeros(res5.shape[-1], np.float32)])  # (3, C5)
  embeds = np.asarray(visual.apply(v, jnp.asarray(pooled), method=clip_convnext.CLIPVisual.head))  # (3, D)
  image_embed = np.asarray(visual.apply(v, clip_pretraining.normalize(jnp.asarray(image[None])),
                                        method=clip_convnext.CLIPVisual.embed_image))[0]
  np.testing.assert_allclose(embeds[0], image_embed, rtol=1e-4, atol=1e-5)
  text = classifier.TextClassifier.from_params('test_tiny', params['text'])(names)
  e = embeds / np.maximum(np.linalg.norm(embeds, axis=-1, keepdims=True), 1e-12)  # the empty mask: 0
  sims = np.where(text['valid'][None], np.einsum('md,ksd->mks', e, text['embeds']), -np.inf).max(-1)  # (3, K)
  np.testing.assert_array_equal(got, sims.argmax(-1))


def test_dense_report_scores_every_ground_truth_pixel(short_clip):
  """The report's segment-level figures cover every ground-truth pixel of its held-out scenes: its
  chance level equals the one computed from those scenes' own labels."""
  dense = short_clip['report']['dense']
  assert dense['num_images'] == 80
  ds = shapes.ShapesSemantic(shapes.ShapesPanoptic('val', 80, SHORT.image_size, SHORT.world_seed + 1,
                                                   patterned=SHORT.patterned))
  counts = np.zeros(len(shapes.class_names('val')), np.int64)
  for i in range(len(ds)):
    sem = ds[i]['sem_seg']
    counts += np.bincount(sem[sem >= 0], minlength=len(counts))
  chance = metrics.chance_metrics(np.diag(counts), shapes.seen_mask('val'))
  for k, v in chance.items():
    assert dense['chance'][k] == pytest.approx(v, abs=0.01), (k, dense['chance'], chance)
  for k in ('mIoU', 'mIoU-seen', 'mIoU-unseen', 'hIoU'):
    assert 0 <= dense[k] <= 100
  assert any('ground-truth segments classified by mask pooling' in line for line in short_clip['logs'])


def test_pretrained_dir_is_a_converted_clip_and_is_cached(short_clip):
  variant, params = convert.load_clip_checkpoint(short_clip['dir'])
  assert variant == SHORT.variant
  config = convert.read_clip_config(short_clip['dir'])
  assert config['sha256'] == clip_pretraining.params_sha256(params)
  text = classifier.TextClassifier.from_checkpoint(short_clip['dir'])([['circle'], ['ring', 'annulus']])
  assert text['embeds'].shape == (2, 2, 32)
  logs = []
  assert clip_pretraining.ensure_pretrained(SHORT, short_clip['root'], log=logs.append) == short_clip['dir']
  assert logs == []  # found in the cache: nothing trained
  other = dataclasses.replace(SHORT, steps=SHORT.steps + 1)
  assert clip_pretraining.checkpoint_dir(other, short_clip['root']) != short_clip['dir']


def test_launcher_rejects_bad_settings():
  proc = subprocess.run([sys.executable, 'launch/pretrain_clip.py', '--steps=0'], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO})
  assert proc.returncode == 2
  assert 'clip_pretrain.steps must be > 0' in proc.stderr and 'Traceback' not in proc.stderr


def test_smoke_path_through_clip_checkpoint_and_rerun_prints_the_results(short_clip, tmp_path):
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from ovsnet_jax import train  # pylint: disable=g-import-not-at-top
  config = smoke.get_config('tiny')
  config.clip_checkpoint = short_clip['dir']
  config.model.clip_variant = SHORT.variant
  first = train.train_and_evaluate(config, str(tmp_path))
  assert first['step'] == config.train.num_steps
  assert {'mIoU', 'mIoU-seen', 'mIoU-unseen', 'hIoU'} <= set(first['eval'])
  again = train.train_and_evaluate(config, str(tmp_path))  # a finished workdir: the same results
  assert again['step'] == first['step']
  assert again['eval']['mIoU-unseen'] == pytest.approx(first['eval']['mIoU-unseen'])
  assert again['train']['loss'] == pytest.approx(first['train']['loss'])
