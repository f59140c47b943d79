"""Proxy Calibration (eq. 5-7): hand-computed losses, Beta sampling, masking, total_loss wiring."""
import itertools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from ovsnet_jax import losses
from ovsnet_jax.losses import proxy_calibration as pc
from ovsnet_jax.losses import total

_sample_alpha = jax.jit(lambda key, gamma: pc.sample_alpha(key, gamma, (200_000,)))

# Entries 0, 1 real; entry 2 padding with arbitrary values.
F_Q = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, -3.0]], np.float32)
F_C = np.array([[0.0, 1.0], [1.0, 0.0], [-2.0, 7.0]], np.float32)
F_T = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, -1.0]], np.float32)
WEIGHTS = np.array([1.0, 1.0, 0.0], np.float32)


def test_mixed_cosine_losses_hand_computed():
  alpha = jnp.array([0.75, 0.5, 0.3])
  perm = jnp.array([1, 0, 2])
  got_q, got_c = pc.mixed_cosine_losses(F_Q, F_C, F_T, WEIGHTS, alpha, perm)
  # m=0 (alpha .75, partner 1): Q' = (.75, .25), C' = (.25, .75), T' = (1, 0)
  #   -> 1 - 3/sqrt(10) and 1 - 1/sqrt(10).
  # m=1 (alpha .5, partner 0): Q' = C' = (.5, .5), T' = (1, 0) -> 1 - 1/sqrt(2) for both.
  want_q = ((1 - 3 / math.sqrt(10)) + (1 - 1 / math.sqrt(2))) / 2
  want_c = ((1 - 1 / math.sqrt(10)) + (1 - 1 / math.sqrt(2))) / 2
  np.testing.assert_allclose(got_q, want_q, rtol=1e-6)
  np.testing.assert_allclose(got_c, want_c, rtol=1e-6)
  # alpha = 1 mixes nothing: plain cosine distances of the real entries.
  ones_q, _ = pc.mixed_cosine_losses(F_Q, F_C, F_T, WEIGHTS, 1.0, perm)
  np.testing.assert_allclose(ones_q, (0.0 + 1.0) / 2, atol=1e-7)


def test_invalid_entries_contribute_nothing():
  alpha = jnp.array([0.75, 0.5, 0.3])
  perm = jnp.array([1, 0, 2])
  fn = lambda q, c, t: sum(pc.mixed_cosine_losses(q, c, t, WEIGHTS, alpha, perm))
  base = fn(F_Q, F_C, F_T)
  changed = [x.copy() for x in (F_Q, F_C, F_T)]
  for x in changed:
    x[2] = [-100.0, 42.0]
  np.testing.assert_allclose(fn(*changed), base, rtol=1e-7)
  grads = jax.grad(fn, argnums=(0, 1, 2))(F_Q, F_C, F_T)
  for g in grads:
    np.testing.assert_array_equal(np.asarray(g)[2], 0.0)
    assert np.all(np.isfinite(np.asarray(g)))
  # No real entry at all: zero loss, no NaN.
  np.testing.assert_array_equal(
      pc.mixed_cosine_losses(F_Q, F_C, F_T, np.zeros(3, np.float32), alpha, perm), (0.0, 0.0))


@pytest.mark.parametrize('gamma', [0.5, 1.0, 2.0])
def test_beta_moments(gamma):
  alpha = np.asarray(_sample_alpha(jax.random.PRNGKey(0), jnp.float32(gamma)))
  assert alpha.min() >= 0.0 and alpha.max() <= 1.0
  np.testing.assert_allclose(alpha.mean(), 0.5, atol=4e-3)
  # Var Beta(g, g) = 1 / (4 (2 g + 1)): 1/8, 1/12, 1/20.
  np.testing.assert_allclose(alpha.var(), 1.0 / (4 * (2 * gamma + 1)), rtol=2e-2)
  # 4th central moment pins the shape: E(x - 1/2)^4 = 3 / (16 (2g+1)(2g+3)).
  np.testing.assert_allclose(((alpha - 0.5) ** 4).mean(),
                             3.0 / (16 * (2 * gamma + 1) * (2 * gamma + 3)), rtol=4e-2)


def test_permute_valid_is_a_uniform_bijection_of_valid_entries():
  valid = jnp.array([False, True, True, False, True])
  perm_fn = jax.jit(jax.vmap(pc.permute_valid, in_axes=(0, None)))
  perms = np.asarray(perm_fn(jax.random.split(jax.random.PRNGKey(1), 3000), valid))
  assert np.all(np.sort(perms, axis=1) == np.arange(5))  # bijection
  np.testing.assert_array_equal(perms[:, [0, 3]], np.tile([0, 3], (3000, 1)))  # padding fixed
  counts = {p: 0 for p in itertools.permutations([1, 2, 4])}
  for row in perms:
    counts[tuple(row[[1, 2, 4]])] += 1
  assert min(counts.values()) > 400 and max(counts.values()) < 600, counts  # 500 each expected


def test_class_text_embeddings_synonym_modes():
  text = {'embeds': jnp.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [5.0, 5.0]]]),
          'valid': jnp.array([[True, True], [True, False]])}
  r = 1 / math.sqrt(2)
  np.testing.assert_allclose(pc.class_text_embeddings(text, 'mean'), [[r, r], [0, 1]], rtol=1e-6)
  np.testing.assert_allclose(pc.class_text_embeddings(text, 'first'), [[1, 0], [0, 1]])
  with pytest.raises(ValueError, match="synonyms must be 'mean' or 'first', got 'max'"):
    pc.class_text_embeddings(text, 'max')


def test_gather_matched_triplets():
  query = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)  # (B, Q, D)
  clip = -query
  class_text = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  classes = jnp.array([[1, 0], [0, 1]])
  indices = jnp.array([[2, -1], [0, 1]])
  valid = jnp.array([[True, False], [True, True]])
  f_q, f_c, f_t, w = map(np.asarray, pc.gather_matched_triplets(query, clip, class_text, classes,
                                                                indices, valid))
  np.testing.assert_array_equal(w, [1, 0, 1, 1])
  np.testing.assert_array_equal(f_q[[0, 2, 3]], [[4, 5], [6, 7], [8, 9]])
  np.testing.assert_array_equal(f_c[[0, 2, 3]], -np.array([[4, 5], [6, 7], [8, 9]]))
  np.testing.assert_array_equal(f_t[[0, 2, 3]], [[0, 1], [1, 0], [0, 1]])


def test_proxy_calibration_loss_composes_alpha_and_permutation():
  key = jax.random.PRNGKey(3)

  @jax.jit
  def both(key):
    k_alpha, k_perm = jax.random.split(key)
    perm = pc.permute_valid(k_perm, jnp.asarray(WEIGHTS) > 0)
    result = []
    for per_pair in (True, False):
      got = pc.proxy_calibration_loss(F_Q, F_C, F_T, key, 2.0, weights=WEIGHTS,
                                      alpha_per_pair=per_pair)
      alpha = pc.sample_alpha(k_alpha, 2.0, (3,) if per_pair else ())
      result.append((got, pc.mixed_cosine_losses(F_Q, F_C, F_T, WEIGHTS, alpha, perm)))
    return result

  for (loss, metrics), (want_q, want_c) in both(key):
    np.testing.assert_allclose(metrics['loss_pc_q'], want_q, rtol=1e-6)
    np.testing.assert_allclose(metrics['loss_pc_c'], want_c, rtol=1e-6)
    np.testing.assert_allclose(loss, want_q + want_c, rtol=1e-6)
  with pytest.raises(ValueError, match='gamma must be > 0, got 0.0'):
    pc.proxy_calibration_loss(F_Q, F_C, F_T, key, 0.0)
  with pytest.raises(ValueError, match=r'must all be \(N, D\)'):
    pc.proxy_calibration_loss(F_Q, F_C[:2], F_T, key, 2.0)


def _tiny_problem(seed=0, layers=2, b=2, q=4, m=3, k=3, s=2, d=8):
  rng = np.random.default_rng(seed)
  out = {'pred_logits': rng.normal(size=(layers, b, q, k + 1)),
         'pred_masks': rng.normal(size=(layers, b, q, 4, 4)) * 3,
         'query_embeds': rng.normal(size=(layers, b, q, d)),
         'clip_embeds': rng.normal(size=(layers, b, q, d)),
         'fused_embeds': rng.normal(size=(layers, b, q, d)),
         'fused_query': rng.normal(size=(layers, b, q, d)),
         'fused_clip': rng.normal(size=(layers, b, q, d))}
  out = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), out)
  embeds = rng.normal(size=(k, s, d))
  text = {'embeds': jnp.asarray(embeds / np.linalg.norm(embeds, axis=-1, keepdims=True),
                                jnp.float32),
          'valid': jnp.array([[True, True], [True, False], [True, True]])}
  batch = {'image': jnp.zeros((b, 16, 16, 3)),
           'masks': jnp.asarray(rng.random((b, m, 16, 16)) < 0.5),
           'classes': jnp.asarray(rng.integers(0, k, (b, m)), jnp.int32),
           'valid': jnp.array([[True, True, False], [True, False, False]])}
  return out, batch, text


def test_pc_layers_last_or_all():
  out, batch, text = _tiny_problem()
  indices = jnp.array([[[0, 2, -1], [3, -1, -1]], [[1, 0, -1], [2, -1, -1]]])  # (L+1, B, M)
  cfg = ml_collections.ConfigDict(dict(gamma=2.0, synonyms='mean', alpha_per_pair=True,
                                       all_layers=False, query_source='query_embeds',
                                       clip_source='fused_embeds'))
  key = jax.random.PRNGKey(0)

  @jax.jit
  def run(out, key):
    cfg.all_layers, cfg.clip_source = False, 'fused_embeds'
    last, _ = total.proxy_calibration_terms(out, batch, text, indices, key, cfg)
    class_text = pc.class_text_embeddings(text)
    want, _ = pc.proxy_calibration_loss(*pc.gather_matched_triplets(
        out['query_embeds'][1], out['fused_embeds'][1], class_text, batch['classes'],
        indices[1], batch['valid'])[:3], key, 2.0, weights=(indices[1] >= 0).reshape(-1))
    cfg.clip_source = 'clip_embeds'
    raw_clip, _ = total.proxy_calibration_terms(out, batch, text, indices, key, cfg)
    swapped, _ = total.proxy_calibration_terms(dict(out, clip_embeds=out['fused_embeds']),
                                               batch, text, indices, key, cfg)
    cfg.all_layers = True
    return last, want, raw_clip, swapped, total.proxy_calibration_terms(
        out, batch, text, indices, key, cfg)

  last, want, raw_clip, swapped, (both, metrics) = run(out, key)
  np.testing.assert_allclose(last, want, rtol=1e-6)  # last layer, F_C from fused_embeds
  np.testing.assert_allclose(swapped, last, rtol=1e-6)
  assert abs(float(raw_clip) - float(last)) > 1e-3  # clip_source picks a different input
  cfg.clip_source = 'pooled'
  with pytest.raises(ValueError, match=r"proxy_calibration.clip_source='pooled': expected one"):
    total.proxy_calibration_terms(out, batch, text, indices, key, cfg)
  np.testing.assert_allclose(both, metrics['loss_pc_0'] + metrics['loss_pc_1'], rtol=1e-6)
  np.testing.assert_allclose(metrics['loss_pc'], metrics['loss_pc_q'] + metrics['loss_pc_c'],
                             rtol=1e-6)


def test_total_loss_adds_weighted_pc_and_disables_cleanly():
  out, batch, text = _tiny_problem()
  cfg = common.get_base_config().train
  cfg.num_points = 16
  cfg.proxy_calibration.weight = 0.5
  key = jax.random.PRNGKey(0)
  on = jax.jit(jax.value_and_grad(lambda o: losses.total_loss(o, batch, text, key, cfg),
                                  has_aux=True))
  (loss, metrics), grads = on(out)
  cfg.proxy_calibration.enabled = False
  off_loss, off_metrics = jax.jit(lambda o: losses.total_loss(o, batch, text, key, cfg))(out)
  np.testing.assert_allclose(metrics['loss_criterion'], off_metrics['loss_criterion'], rtol=1e-6)
  np.testing.assert_allclose(loss, off_loss + 0.5 * metrics['loss_pc'], rtol=1e-6)
  assert float(off_metrics['loss_pc']) == 0.0 and float(metrics['loss_pc']) > 0.0
  np.testing.assert_allclose(off_loss, off_metrics['loss'])
  for name in ('loss_ce_0', 'loss_mask_1', 'loss_dice_1', 'loss_ce', 'loss_pc_q', 'num_masks'):
    assert name in metrics, name
  # By default PC mixes the aggregated embeddings (section 4.3): F_Q^inf and F_C^inf of the last layer.
  assert float(jnp.abs(grads['fused_query'][-1]).sum()) > 0
  assert float(jnp.abs(grads['fused_query'][0]).sum()) == 0.0  # and not the first layer
  assert float(jnp.abs(grads['fused_clip'][-1]).sum()) > 0
  for name in ('query_embeds', 'clip_embeds', 'fused_embeds'):
    assert float(jnp.abs(grads[name]).sum()) == 0.0, name
  with pytest.raises(ValueError, match="batch has no 'valid'"):
    losses.total_loss(out, {'masks': batch['masks'], 'classes': batch['classes']}, text, key, cfg)
