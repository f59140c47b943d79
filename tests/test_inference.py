"""Inference: FC-CLIP ensemble parity, chunked = unchunked, segment() with a real tiny CLIP and 3000 classes."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from configs import smoke
from ovsnet_jax import inference
from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.models import ovsnet
from ovsnet_jax.text import classifier
from ovsnet_jax.text import vocab


def ens_cfg(**kw):
  c = ml_collections.ConfigDict(dict(enabled=True, alpha=0.4, beta=0.8, on_valid_mask=False, class_chunk=1024))
  c.update(kw)
  return c


def fcclip_reference(mask_cls_results, out_vocab_logits, overlap, alpha, beta, valid=None):
  """FCCLIP.forward's eval branch (ensemble + void gating) then semantic_inference's softmax, in torch."""
  in_vocab = mask_cls_results[..., :-1].softmax(-1)
  out_vocab = out_vocab_logits.softmax(-1)
  a = torch.full_like(in_vocab, alpha)
  b = torch.full_like(in_vocab, beta)
  if valid is not None:
    a, b = a * valid[..., None], b * valid[..., None]
  seen = (in_vocab ** (1 - a) * out_vocab ** a).log() * overlap
  unseen = (in_vocab ** (1 - b) * out_vocab ** b).log() * (1 - overlap)
  cls = seen + unseen
  is_void = mask_cls_results.softmax(-1)[..., -1:]
  mask_cls = torch.log(torch.cat([cls.softmax(-1) * (1.0 - is_void), is_void], -1) + 1e-8)
  return mask_cls.softmax(-1)[..., :-1]


@pytest.mark.parametrize('on_valid_mask', [False, True])
def test_ensemble_matches_fcclip(on_valid_mask):
  rng = np.random.default_rng(0)
  in_logits = rng.normal(scale=3, size=(2, 7, 10)).astype(np.float32)  # (B, Q, K+1)
  out_logits = rng.normal(scale=3, size=(2, 7, 9)).astype(np.float32)
  seen = rng.uniform(size=9) < 0.5
  valid = rng.uniform(size=(2, 7)) < 0.7
  ref = fcclip_reference(torch.from_numpy(in_logits), torch.from_numpy(out_logits),
                         torch.from_numpy(seen.astype(np.float32)), 0.4, 0.8,
                         torch.from_numpy(valid.astype(np.float32)) if on_valid_mask else None).numpy()
  got = inference.ensemble_probs(jnp.asarray(in_logits), jnp.asarray(out_logits), jnp.asarray(seen),
                                 ens_cfg(on_valid_mask=on_valid_mask), jnp.asarray(valid))
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-7)
  off = inference.ensemble_probs(jnp.asarray(in_logits), jnp.asarray(out_logits), jnp.asarray(seen),
                                 ens_cfg(enabled=False))
  np.testing.assert_allclose(np.asarray(off), torch.from_numpy(in_logits).softmax(-1)[..., :-1].numpy(), rtol=1e-6)


def test_chunked_logits_equal_unchunked():
  rng = np.random.default_rng(1)
  e = rng.normal(size=(3000, 3, 16)).astype(np.float32)
  valid = rng.uniform(size=(3000, 3)) < 0.6
  valid[:, 0] = True
  text = {'embeds': jnp.asarray(e / np.linalg.norm(e, axis=-1, keepdims=True)), 'valid': jnp.asarray(valid)}
  feats = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
  full = classifier.synonym_max_logits(feats, text, jnp.float32(np.log(1 / 0.07)))
  chunked = inference.chunked_logits(feats, text, jnp.float32(np.log(1 / 0.07)), 256)
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(full), rtol=1e-5, atol=1e-5)  # float32 sum order


def test_chunked_argmax_hand_computed():
  probs = jnp.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])  # (Q, K)
  masks = jnp.array([[[1.0, 1.0], [0.0, 0.5]], [[0.0, 1.0], [1.0, 0.5]]])  # (Q, H, W)
  # scores k0 = [[.5,.5],[0,.25]], k1 = [[.5,.7],[.2,.35]], k2 = [[0,.8],[.8,.4]]
  for chunk in (1, 2, 3):
    out = inference.chunked_argmax(probs, masks, chunk)
    np.testing.assert_array_equal(np.asarray(out['labels']), [[0, 2], [2, 2]])  # tie at (0,0) -> class 0
    np.testing.assert_allclose(np.asarray(out['confidence']), [[0.5, 0.8], [0.8, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out['class_scores']), [0.5, 0.7, 0.8], rtol=1e-6)


@pytest.fixture(scope='module')
def tiny(tiny_clip_dir):
  config = smoke.get_config()
  _, clip_params = convert.load_clip_checkpoint(tiny_clip_dir)
  params = jax.jit(lambda key: ovsnet.init_params(config, key, clip_params))(jax.random.PRNGKey(0))
  classify = classifier.TextClassifier.from_checkpoint(tiny_clip_dir, templates=('a photo of a {}.',))
  return ovsnet.build_model(config), params, classify


def test_segment_thousands_of_classes_chunked_equals_unchunked(tiny):
  model, params, classify = tiny
  names = [['person'], ['grass'], ['sky']] + [[f'thing number {i}', f'object {i}'] for i in range(2997)]
  text = classify(names)
  assert text['embeds'].shape == (3000, 2, 32)
  image = np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)
  kw = dict(model=model, text=text, min_size=64, max_size=128)
  chunked = inference.segment(params, image, names, class_chunk=128, **kw)
  whole = inference.segment(params, image, names, class_chunk=4096, **kw)
  assert chunked['labels'].shape == (50, 70) and chunked['labels'].dtype == np.int32
  assert chunked['class_scores'].shape == (3000,)
  np.testing.assert_array_equal(chunked['labels'], whole['labels'])
  np.testing.assert_allclose(chunked['class_scores'], whole['class_scores'], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(chunked['confidence'], whole['confidence'], rtol=1e-5, atol=1e-7)
  assert chunked['seen'][:3].tolist() == [True, True, True] and not chunked['seen'][3:].any()
  assert np.isin(chunked['labels'], np.flatnonzero(chunked['class_scores'] >= chunked['confidence'].min())).all()


def test_segment_matches_semantic_logits(tiny):
  """segment() (masks resized before the class sum) = semantic_logits() cropped, resized, argmax."""
  model, params, classify = tiny
  names = [['cat'], ['dog', 'puppy'], ['grass'], ['sky']]
  text = classify(names)
  image = np.random.default_rng(3).integers(0, 256, (40, 90, 3), dtype=np.uint8)
  result = inference.segment(params, image, names, model=model, classify=classify, min_size=64, max_size=128)
  padded, (h, w) = inference.preprocess(image, 64, 128, model.config.pixel_mean)
  scores = jax.jit(lambda p, x, t, s: inference.semantic_logits(model, p, x, t, s))(
      params, jnp.asarray(padded), {k: jnp.asarray(v) for k, v in text.items()}, jnp.asarray(vocab.seen_mask(names)))
  assert scores.shape == (1, 64, 128, 4)  # 40x90 -> 57x128, padded to 64x128
  scores = jax.image.resize(scores[0, :h, :w], (40, 90, 4), 'bilinear', antialias=False)
  agree = (np.asarray(scores.argmax(-1)) == result['labels']).mean()
  assert agree > 0.999, agree
  np.testing.assert_allclose(np.asarray(scores.max(-1)), result['confidence'], atol=1e-5)


def test_segment_bad_input(tiny):
  model, params, _ = tiny
  image = np.zeros((32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match=r'segment: pass classify \(a TextClassifier\) or a precomputed text dict'):
    inference.segment(params, image, [['cat']], model=model)
  with pytest.raises(ValueError, match=r'image: expected a \(H, W, 3\) uint8 RGB array, got \(32, 32\)'):
    inference.segment(params, image[..., 0], [['cat']], model=model, text={'embeds': np.ones((1, 1, 32)),
                                                                           'valid': np.ones((1, 1), bool)})
