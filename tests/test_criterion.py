"""Set criterion: hand-computed cases and parity with Mask2Former's formulas written in PyTorch."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovsnet_jax.losses import criterion
from ovsnet_jax.losses import point_sampling


def _cfg(num_points=48):
  return ml_collections.ConfigDict(dict(
      class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1,
      num_points=num_points, oversample_ratio=3.0, importance_sample_ratio=0.75))


_CFG = _cfg()
_match = jax.jit(lambda o, t, r: criterion.match_all_layers(o, t, r, _CFG))
_from_indices = jax.jit(lambda o, t, i, r: criterion.criterion_from_indices(o, t, i, r, _CFG))
_loss_and_grad = jax.jit(jax.value_and_grad(
    lambda o, t, r: criterion.set_criterion(o, t, r, _CFG), has_aux=True))


# ---- PyTorch reference (Mask2Former's criterion formulas) ----------------------------------------
def _t(x):
  return torch.from_numpy(np.array(x))


def _torch_point_sample(x, coords):
  """detectron2 `point_sample`: x (N, C, H, W), coords (N, P, 2) -> (N, C, P)."""
  return F.grid_sample(x, 2.0 * coords.unsqueeze(2) - 1.0, align_corners=False).squeeze(3)


def _torch_uncertain_points(logits, candidates, random_points, num_uncertain):
  """`get_uncertain_point_coords_with_randomness` with its torch.rand draws given."""
  n, num_sampled = candidates.shape[:2]
  point_logits = _torch_point_sample(logits, candidates)  # (N, 1, P_over)
  uncertainty = -torch.abs(point_logits)
  idx = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1)[1]
  idx = idx + num_sampled * torch.arange(n)[:, None]
  chosen = candidates.reshape(-1, 2)[idx.reshape(-1), :].reshape(n, num_uncertain, 2)
  return torch.cat([chosen, random_points], dim=1)


def _torch_sigmoid_ce(inputs, targets, num_masks):
  loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction='none')
  return loss.mean(1).sum() / num_masks


def _torch_dice(inputs, targets, num_masks):
  inputs = inputs.sigmoid().flatten(1)
  numerator = 2 * (inputs * targets).sum(-1)
  denominator = inputs.sum(-1) + targets.sum(-1)
  return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def _torch_layer(logits, masks, t_masks, t_classes, t_valid, indices, points, num_masks, cfg):
  """Mask2Former `loss_labels` + `loss_masks` for one layer, given matching and points."""
  b, q, k1 = logits.shape
  src_b, src_q, tgt = [], [], []
  for i in range(b):
    for m in range(indices.shape[1]):
      if t_valid[i, m] and indices[i, m] >= 0:
        src_b.append(i), src_q.append(int(indices[i, m])), tgt.append((i, m))
  empty_weight = torch.ones(k1, dtype=torch.float64)
  empty_weight[-1] = cfg.no_object_weight
  target_classes = torch.full((b, q), k1 - 1, dtype=torch.long)
  for (i, m), qq in zip(tgt, src_q):
    target_classes[i, qq] = int(t_classes[i, m])
  loss_ce = F.cross_entropy(_t(logits).double().transpose(1, 2), target_classes, empty_weight)
  src = _t(masks).double()[src_b, src_q][:, None]  # (N, 1, h, w)
  tgt_masks = _t(t_masks).double()[[i for i, _ in tgt], [m for _, m in tgt]][:, None]
  pts = _t(points[:len(tgt)]).double()  # (N, P, 2): the matched targets' points in (i, m) order
  labels = _torch_point_sample(tgt_masks, pts).squeeze(1)
  point_logits = _torch_point_sample(src, pts).squeeze(1)
  return (loss_ce.item(), _torch_sigmoid_ce(point_logits, labels, num_masks).item(),
          _torch_dice(point_logits, labels, num_masks).item())


# ---- hand-computed cases -------------------------------------------------------------------------
def test_point_sample_hand_computed():
  maps = jnp.array([[[4.0, 1.0], [2.0, 3.0]]])  # (1, 2, 2)
  coords = jnp.array([[0.0, 0.0], [0.5, 0.5], [0.25, 0.25], [0.75, 0.25], [0.0, 0.25]])
  got = np.asarray(point_sampling.point_sample(maps, coords))[0]
  # (0,0): pixel (-.5,-.5), only (0,0) inside with weight 1/4; (.5,.5): mean of the 4 pixels;
  # (.25,.25): pixel (0,0); (.75,.25): pixel (1,0); (0,.25): pixel (-.5,0), weight 1/2 on (0,0).
  np.testing.assert_allclose(got, [1.0, 2.5, 4.0, 1.0, 2.0], atol=1e-6)


def test_weighted_cross_entropy_hand_computed():
  logits = jnp.array([[[math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]]])  # (1, Q=2, K+1=3)
  labels = jnp.array([[0, 2]])
  got = criterion.weighted_cross_entropy(logits, labels, jnp.array([1.0, 1.0, 0.1]))
  # q0: p = 2/4 -> log 2 (weight 1); q1: no-object, p = 1/3 -> log 3 (weight 0.1).
  np.testing.assert_allclose(got, (math.log(2) + 0.1 * math.log(3)) / 1.1, rtol=1e-6)


def test_bce_and_dice_hand_computed():
  logits = jnp.zeros((1, 4))
  labels = jnp.array([[1.0, 1.0, 0.0, 0.0]])
  np.testing.assert_allclose(criterion.sigmoid_bce_per_mask(logits, labels), [math.log(2)],
                             rtol=1e-6)
  # p = 0.5: 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4
  np.testing.assert_allclose(criterion.dice_per_mask(logits, labels), [0.4], rtol=1e-6)


def test_class_targets_and_num_masks():
  indices = jnp.array([[2, -1, 0], [-1, -1, -1]])
  classes = jnp.array([[7, 8, 9], [1, 2, 3]])
  got = criterion.class_targets(indices, classes, num_queries=4, no_object=10)
  np.testing.assert_array_equal(got, [[9, 10, 7, 10], [10, 10, 10, 10]])
  assert float(criterion.count_masks(jnp.zeros((2, 3), bool))) == 1.0  # clamped
  assert float(criterion.count_masks(jnp.ones((2, 3), bool))) == 6.0


def test_uncertain_points_match_detectron2():
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(3, 6, 7)) * 2).astype(np.float32)
  candidates = rng.random((3, 60, 2)).astype(np.float32)
  random_points = rng.random((3, 5, 2)).astype(np.float32)
  got = point_sampling.select_uncertain_points(jnp.asarray(logits), jnp.asarray(candidates),
                                               jnp.asarray(random_points), 15)
  want = _torch_uncertain_points(_t(logits)[:, None], _t(candidates), _t(random_points), 15)
  np.testing.assert_array_equal(np.asarray(got), want.numpy())


# ---- parity of the whole criterion ---------------------------------------------------------------
def _problem(seed, b=2, q=6, m=4, k=5, layers=3):
  rng = np.random.default_rng(seed)
  out = {'pred_logits': rng.normal(size=(layers, b, q, k + 1)).astype(np.float32),
         'pred_masks': (rng.normal(size=(layers, b, q, 8, 8)) * 3).astype(np.float32)}
  valid = np.array([[True, True, False, True], [True, False, False, False]])[:b, :m]
  targets = {'masks': rng.random((b, m, 32, 32)) < 0.4,
             'classes': rng.integers(0, k, size=(b, m)).astype(np.int32), 'valid': valid}
  return out, targets


@pytest.mark.parametrize('seed,empty', [(0, False), (1, True)])
def test_criterion_matches_torch_reference(seed, empty):
  """empty: valid targets with all-False masks (segments LSJ cropped away, kept as FC-CLIP does)."""
  cfg = _CFG
  out, targets = _problem(seed)
  if empty:
    targets['masks'][0, 1] = targets['masks'][1, 0] = False  # both valid
  jout = jax.tree.map(jnp.asarray, out)
  jtargets = jax.tree.map(jnp.asarray, targets)
  key = jax.random.PRNGKey(seed)
  indices = _match(jout, jtargets, key)
  loss, metrics = _from_indices(jout, jtargets, indices, key)
  indices = np.asarray(indices)
  num_masks = max(float(targets['valid'].sum()), 1.0)
  keys = jax.random.split(key, indices.shape[0])
  want_total = 0.0
  for layer in range(indices.shape[0]):
    budget = criterion.mask_budget(*indices.shape[1:], out['pred_masks'].shape[2])
    image, _, query, _, _ = criterion.matched_slots(jnp.asarray(indices[layer]),
                                                    jtargets['valid'], budget)
    src = out['pred_masks'][layer][np.asarray(image), np.asarray(query)]  # (N, h, w)
    points = point_sampling.uncertain_point_coords(
        jnp.asarray(src), keys[layer], cfg.num_points, cfg.oversample_ratio,
        cfg.importance_sample_ratio)
    ce, bce, dice = _torch_layer(out['pred_logits'][layer], out['pred_masks'][layer],
                                 targets['masks'], targets['classes'], targets['valid'],
                                 indices[layer], np.asarray(points), num_masks, cfg)
    np.testing.assert_allclose(metrics[f'loss_ce_{layer}'], ce, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(metrics[f'loss_mask_{layer}'], bce, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(metrics[f'loss_dice_{layer}'], dice, atol=1e-5, rtol=1e-5)
    want_total += 2.0 * ce + 5.0 * bce + 5.0 * dice
  np.testing.assert_allclose(loss, want_total, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss_criterion'], want_total, atol=1e-5, rtol=1e-5)
  assert float(metrics['num_masks']) == num_masks
  if empty:  # the empty targets are matched and counted like any other
    assert (indices[:, 0, 1] >= 0).all() and (indices[:, 1, 0] >= 0).all() and num_masks == 4


def test_set_criterion_is_jittable_and_differentiable():
  out, targets = _problem(3)
  jout = jax.tree.map(jnp.asarray, out)
  jtargets = jax.tree.map(jnp.asarray, targets)
  (loss, _), grads = _loss_and_grad(jout, jtargets, jax.random.PRNGKey(0))
  assert np.isfinite(float(loss))
  # Every layer gets gradient through its class logits and its matched masks.
  assert np.all(np.abs(np.asarray(grads['pred_logits'])).sum(axis=(1, 2, 3)) > 0)
  assert np.all(np.abs(np.asarray(grads['pred_masks'])).sum(axis=(1, 2, 3, 4)) > 0)
  # Only matched queries get mask gradient: 3 valid targets in image 0, 1 in image 1, per layer.
  touched = np.abs(np.asarray(grads['pred_masks'])).sum(axis=(3, 4)) > 0  # (L+1, B, Q)
  np.testing.assert_array_equal(touched.sum(-1), [[3, 1]] * 3)


def test_no_valid_targets_gives_only_no_object_cross_entropy():
  out, targets = _problem(4)
  targets['valid'][:] = False
  (loss, metrics), grads = _loss_and_grad(jax.tree.map(jnp.asarray, out),
                                          jax.tree.map(jnp.asarray, targets), jax.random.PRNGKey(0))
  assert not np.any(np.asarray(grads['pred_masks']))
  logp = jax.nn.log_softmax(out['pred_logits'], -1)[..., -1]  # (L+1, B, Q)
  want = 2.0 * float(-logp.mean(axis=(1, 2)).sum())
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert float(metrics['loss_mask']) == 0.0 and float(metrics['num_masks']) == 1.0


def test_bad_targets_raise():
  out, targets = _problem(5)
  targets['classes'] = targets['classes'][:, :2]
  with pytest.raises(ValueError, match=r'targets must be masks \(B, M, H, W\), classes \(B, M\)'):
    criterion.set_criterion(out, targets, jax.random.PRNGKey(0), _cfg())


def test_budget_leaves_real_target_losses_unchanged_and_overflow_is_reported():
  out, targets = _problem(6)  # 3 + 1 matched targets
  jout = jax.tree.map(jnp.asarray, out)
  jtargets = jax.tree.map(jnp.asarray, targets)
  key = jax.random.PRNGKey(6)
  indices = _match(jout, jtargets, key)
  results = {}
  for per_image in (0, 2, 1):  # budgets 8 (every slot), 4 (exactly the matched), 2 (too small)
    cfg = _cfg()
    cfg.sampled_masks_per_image = per_image
    results[per_image] = jax.jit(lambda o, t, i, r, c=cfg: criterion.criterion_from_indices(
        o, t, i, r, c))(jout, jtargets, indices, key)[1]
  # The points of a slot do not depend on the slot count (counter-based threefry).
  for name in ('loss_mask', 'loss_dice', 'loss_criterion'):
    np.testing.assert_allclose(results[2][name], results[0][name], rtol=1e-6)
  assert float(results[0]['masks_over_budget']) == 0 == float(results[2]['masks_over_budget'])
  assert float(results[1]['masks_over_budget']) == 2.0
  assert float(results[1]['loss_mask']) < float(results[0]['loss_mask'])
  criterion.check_mask_budget(targets['valid'], 6, 2)
  with pytest.raises(ValueError, match=r'step 7: 4 matched targets in a batch of 2 images, over the '
                     r'point-sampling budget of 2 \(train.sampled_masks_per_image=1'):
    criterion.check_mask_budget(targets['valid'], 6, 1, where='step 7')
