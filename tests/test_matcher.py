"""Hungarian matching against scipy, and the matching cost against Mask2Former's formulas."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.optimize
import torch
import torch.nn.functional as F

from ovsnet_jax.losses import matcher

_match = jax.jit(matcher.hungarian_match)


def _scipy_total(cost, valid):
  """Optimal total of the (Q, M_valid) rectangular problem and the number of matches."""
  sub = cost[:, valid]
  rows, cols = scipy.optimize.linear_sum_assignment(sub)
  return sub[rows, cols].sum(dtype=np.float64), len(rows)


def _check(cost, valid, rtol=1e-6):
  """Asserts that the JAX assignment is a valid matching with scipy's optimal total."""
  got = np.asarray(_match(jnp.asarray(cost), jnp.asarray(valid)))
  assert got.shape == valid.shape and got.dtype == np.int32
  for b in range(cost.shape[0]):
    idx = got[b]
    assert np.all(idx[~valid[b]] == -1), 'invalid targets must be unmatched'
    matched = idx[idx >= 0]
    assert len(set(matched.tolist())) == len(matched), 'a query was used twice'
    want, count = _scipy_total(cost[b], valid[b])
    assert len(matched) == count
    total = sum(float(cost[b, q, t]) for t, q in enumerate(idx) if q >= 0)
    scale = max(1.0, np.abs(cost[b][:, valid[b]]).sum())
    assert abs(total - want) <= rtol * scale, (b, total, want)


@pytest.mark.parametrize('q,m', [(5, 5), (7, 4), (4, 7), (10, 10), (16, 9)])
def test_random_costs_match_scipy_total(q, m):
  rng = np.random.default_rng(q * 100 + m)
  cost = rng.normal(size=(6, q, m)).astype(np.float32)
  valid = rng.random((6, m)) < 0.7
  valid[0] = True  # all valid
  valid[1] = False  # none valid
  _check(cost, valid)


def test_more_valid_targets_than_queries_matches_every_query():
  rng = np.random.default_rng(1)
  cost = rng.uniform(-1, 1, size=(4, 3, 8)).astype(np.float32)
  valid = np.ones((4, 8), bool)
  valid[1, [0, 5]] = False  # 6 valid > 3 queries
  valid[2, 3:] = False  # exactly Q valid
  valid[3, 2:] = False  # fewer valid than queries
  _check(cost, valid)
  got = np.asarray(_match(jnp.asarray(cost), jnp.asarray(valid)))
  assert (got[0] >= 0).sum() == 3 and (got[1] >= 0).sum() == 3 and (got[3] >= 0).sum() == 2


def test_many_small_random_problems():
  # 300 problems at once (vmapped): integer costs (many ties), random validity, M > Q included.
  rng = np.random.default_rng(6)
  cost = rng.integers(-3, 4, size=(300, 6, 9)).astype(np.float32)
  valid = rng.random((300, 9)) < rng.random((300, 1))
  _check(cost, valid)


def test_ties_and_all_equal_costs():
  rng = np.random.default_rng(2)
  ties = rng.integers(0, 3, size=(3, 8, 6)).astype(np.float32)  # many ties
  equal = np.full((2, 8, 6), 0.25, np.float32)
  cost = np.concatenate([ties, equal])
  valid = np.ones((5, 6), bool)
  valid[4, ::2] = False
  _check(cost, valid)


def test_large_magnitudes_float32():
  rng = np.random.default_rng(3)
  cost = (rng.normal(size=(4, 12, 12)) * 1e6).astype(np.float32)
  valid = rng.random((4, 12)) < 0.8
  _check(cost, valid, rtol=1e-6)


def test_padded_targets_ignore_their_costs():
  rng = np.random.default_rng(4)
  cost = rng.normal(size=(2, 6, 5)).astype(np.float32)
  valid = np.array([[True, False, True, False, True]] * 2)
  garbage = cost.copy()
  garbage[:, :, ~valid[0]] = -1e9  # would attract every query if padded targets counted
  a = np.asarray(_match(jnp.asarray(cost), jnp.asarray(valid)))
  b = np.asarray(_match(jnp.asarray(garbage), jnp.asarray(valid)))
  np.testing.assert_array_equal(a, b)


def test_hand_computed_case():
  # Query rows q0 [1, 2], q1 [1, 9], q2 [7, 7]. Greedy t0->q0 leaves t1 at best 7 (total 8);
  # the optimum is t0->q1, t1->q0 with total 1 + 2 = 3.
  cost = np.array([[[1.0, 2.0], [1.0, 9.0], [7.0, 7.0]]], np.float32)  # (1, Q=3, M=2)
  got = np.asarray(_match(jnp.asarray(cost), jnp.ones((1, 2), bool)))
  np.testing.assert_array_equal(got, [[1, 0]])


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match=r'expected cost \(B, Q, M\) and valid \(B, M\)'):
    matcher.hungarian_match(jnp.zeros((2, 3, 4)), jnp.ones((2, 3), bool))


def _torch_point_sample(x, coords):
  return F.grid_sample(x, 2.0 * coords.unsqueeze(2) - 1.0, align_corners=False).squeeze(3)


def test_matching_cost_matches_mask2former_formulas():
  """Same points -> same cost as FC-CLIP's matcher (softmax class prob, batch BCE and dice)."""
  cfg = ml_collections.ConfigDict(dict(class_weight=2.0, mask_weight=5.0, dice_weight=5.0,
                                       num_points=64))
  rng = np.random.default_rng(5)
  b, q, m, k = 2, 6, 4, 5
  logits = rng.normal(size=(b, q, k + 1)).astype(np.float32)
  masks = (rng.normal(size=(b, q, 8, 8)) * 3).astype(np.float32)
  targets = rng.random((b, m, 32, 32)) < 0.4
  classes = rng.integers(0, k, size=(b, m)).astype(np.int32)
  key = jax.random.PRNGKey(0)
  got = np.asarray(matcher.matching_cost(jnp.asarray(logits), jnp.asarray(masks),
                                         jnp.asarray(targets), jnp.asarray(classes), key, cfg))
  coords = np.asarray(jax.random.uniform(key, (b, cfg.num_points, 2), jnp.float32))
  for i in range(b):
    pt = torch.from_numpy(coords[i].copy())[None]
    out = _torch_point_sample(torch.from_numpy(masks[i])[:, None], pt.repeat(q, 1, 1))[:, 0]
    tgt = _torch_point_sample(torch.from_numpy(targets[i]).float()[:, None],
                              pt.repeat(m, 1, 1))[:, 0]
    cost_class = -torch.from_numpy(logits[i]).softmax(-1)[:, torch.from_numpy(classes[i]).long()]
    pos = F.binary_cross_entropy_with_logits(out, torch.ones_like(out), reduction='none')
    neg = F.binary_cross_entropy_with_logits(out, torch.zeros_like(out), reduction='none')
    bce = (pos @ tgt.T + neg @ (1 - tgt).T) / out.shape[1]
    prob = out.sigmoid()
    dice = 1 - (2 * prob @ tgt.T + 1) / (prob.sum(-1)[:, None] + tgt.sum(-1)[None, :] + 1)
    want = (5.0 * bce + 2.0 * cost_class + 5.0 * dice).double().numpy()
    np.testing.assert_allclose(got[i], want, atol=1e-5, rtol=1e-5)
