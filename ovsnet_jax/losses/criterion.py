"""Mask2Former / FC-CLIP set criterion with deep supervision (`fcclip/modeling/criterion.py`).

Per prediction layer l (all L+1 of them, each with its own Hungarian matching):
  loss_ce_l   = cross-entropy over Q x (K+1), class weights 1 and `no_object_weight` for the
                no-object column, normalised as torch's `F.cross_entropy(weight=...)`
                (weighted mean),
  loss_mask_l = sum over matched masks of the mean sigmoid BCE on P importance-sampled points,
                divided by num_masks,
  loss_dice_l = sum over matched masks of 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1), / num_masks.
The total is sum_l (class_weight * ce_l + mask_weight * mask_l + dice_weight * dice_l).

num_masks: with jit on globally sharded arrays (NamedSharding over 'data') the batch is global, so
the plain sum of valid targets over the batch already is Mask2Former's all-reduced count; under
pmap/shard_map pass `axis_name` and it is averaged across devices (psum / axis size) as
Mask2Former does. Either way it is clamped to >= 1. (On the global batch the clamp applies to the
global count, not the per-device mean; the two only differ when there are fewer masks than
devices. The weighted cross-entropy is likewise normalised over the global batch.)
"""
import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name
import numpy as np

from ovsnet_jax.losses import matcher
from ovsnet_jax.losses import point_sampling


def weighted_cross_entropy(logits, labels, class_weights):
  """torch's `F.cross_entropy(logits, labels, weight=class_weights)` (weighted mean).

  Args:
    logits: (..., K+1) float.
    labels: (...) int32 in [0, K].
    class_weights: (K+1,) float.

  Returns:
    Scalar sum(w[y] * -log p[y]) / sum(w[y]).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # (..., K+1)
  nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]  # (...)
  weights = class_weights[labels]  # (...)
  return (weights * nll).sum() / weights.sum()


def sigmoid_bce_per_mask(logits, labels):
  """Mean over points of BCE-with-logits: (N, P), (N, P) -> (N,)."""
  x = logits.astype(jnp.float32)
  t = labels.astype(jnp.float32)
  # max(x, 0) - x t + log(1 + exp(-|x|)), torch's stable form.
  bce = jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))
  return bce.mean(-1)


def dice_per_mask(logits, labels):
  """1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1) with p = sigmoid(logits): (N, P) -> (N,)."""
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  t = labels.astype(jnp.float32)
  numerator = 2.0 * (p * t).sum(-1)
  denominator = p.sum(-1) + t.sum(-1)
  return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def class_targets(indices, classes, num_queries, no_object):
  """Per-query class labels: the matched target's class, `no_object` elsewhere.

  Args:
    indices: (B, M) int32 query of each target, -1 if unmatched.
    classes: (B, M) int32.
    num_queries: Q.
    no_object: the no-object label (K).

  Returns:
    (B, Q) int32.
  """
  batch = indices.shape[0]
  rows = jnp.arange(batch)[:, None]  # (B, 1)
  cols = jnp.where(indices >= 0, indices, num_queries)  # (B, M); Q is out of range -> dropped
  labels = jnp.full((batch, num_queries), no_object, jnp.int32)
  return labels.at[rows, cols].set(classes.astype(jnp.int32), mode='drop')


def count_masks(valid, axis_name=None):
  """Normaliser of the mask losses: number of valid targets (averaged over `axis_name`), >= 1."""
  num = valid.astype(jnp.float32).sum()
  if axis_name is not None:
    num = lax.psum(num, axis_name) / lax.psum(1.0, axis_name)
  return jnp.maximum(num, 1.0)


def mask_budget(batch, num_targets, num_queries, per_image=0):
  """Static number of mask slots point-sampled per layer (`train.sampled_masks_per_image`).

  At most min(M, Q) targets of an image are matched, so B * min(M, Q) slots always suffice;
  `per_image` > 0 lowers the budget to B * min(per_image, M, Q) slots for the whole batch.
  """
  cap = min(num_targets, num_queries)
  return batch * (min(per_image, cap) if per_image > 0 else cap)


def matched_counts(valid, num_queries):
  """Matched targets per image, min(#valid, Q) (every layer matches that many): (B, M) -> (B,)."""
  return jnp.minimum(jnp.asarray(valid).astype(jnp.int32).sum(-1), num_queries)


def check_mask_budget(valid, num_queries, per_image, where='batch'):
  """Host-side check of a (numpy) batch against the budget: raises ValueError when over it.

  The graph compacts at most `mask_budget` matched masks; a batch with more would drop some, so
  the train loop calls this on each host batch (local batch: a sufficient check per host).
  """
  if per_image <= 0:
    return
  valid = np.asarray(valid)
  num_matched = int(np.minimum(valid.sum(-1), num_queries).sum())
  budget = mask_budget(valid.shape[0], valid.shape[1], num_queries, per_image)
  if num_matched > budget:
    raise ValueError(
        f'{where}: {num_matched} matched targets in a batch of {valid.shape[0]} images, over the '
        f'point-sampling budget of {budget} (train.sampled_masks_per_image={per_image} per image); '
        f'raise train.sampled_masks_per_image (0 = no budget, every target slot sampled).')


def matched_slots(indices, valid, budget):
  """The first `budget` matched (valid) targets of the batch, in (image, target) order.

  Args:
    indices: (B, M) int32 matched query per target, -1 if unmatched.
    valid: (B, M) bool.
    budget: static number of slots N.

  Returns:
    (image (N,), target (N,), query (N,), used (N,) bool, overflow): the slots' image, target and
    query indices (0 for unused slots), and how many matched targets did not fit (0 normally).
  """
  batch, num_targets = indices.shape
  matched = ((indices >= 0) & valid).reshape(-1)  # (B*M,)
  flat = jnp.nonzero(matched, size=budget, fill_value=0)[0]  # (N,)
  count = matched.sum()
  used = jnp.arange(budget) < count  # (N,)
  image, target = flat // num_targets, flat % num_targets
  query = jnp.where(used, jnp.maximum(indices[image, target], 0), 0)
  return image, target, query, used, jnp.maximum(count - budget, 0)


def mask_losses(pred_masks, target_masks, indices, valid, num_masks, rng, cfg, budget=None):
  """BCE and dice of the matched masks on importance-sampled points.

  Only matched targets are point-sampled: they are compacted into `budget` slots (padded slots
  carry weight 0), so the cost scales with the real targets, not with the padded M.

  Args:
    pred_masks: (B, Q, h, w) mask logits.
    target_masks: (B, M, H, W) bool masks at input resolution.
    indices: (B, M) int32 matched query per target, -1 if unmatched.
    valid: (B, M) bool.
    num_masks: scalar normaliser.
    rng: PRNG key for the points.
    cfg: `num_points`, `oversample_ratio`, `importance_sample_ratio`, optional
      `sampled_masks_per_image` and `point_rng`.
    budget: static slot count; None -> `mask_budget` from cfg.

  Returns:
    (loss_mask, loss_dice, overflow) scalars; overflow counts matched masks left out (budget).
  """
  batch, num_targets = indices.shape
  if budget is None:
    budget = mask_budget(batch, num_targets, pred_masks.shape[1],
                         cfg.get('sampled_masks_per_image', 0))
  image, target, query, used, overflow = matched_slots(indices, valid, budget)
  src = pred_masks[image, query].astype(jnp.float32)  # (N, h, w)
  tgt = target_masks[image, target]  # (N, H, W)
  points = point_sampling.uncertain_point_coords(
      src, rng, cfg.num_points, cfg.oversample_ratio, cfg.importance_sample_ratio,
      cfg.get('point_rng', 'threefry'))  # (N, P, 2)
  points = checkpoint_name(points, 'criterion_points')  # kept by the remat policy below
  point_labels = lax.stop_gradient(point_sampling.point_sample_each(tgt, points))  # (N, P)
  point_logits = point_sampling.point_sample_each(src, points)  # (N, P)
  weight = used.astype(jnp.float32)  # (N,)
  loss_mask = (weight * sigmoid_bce_per_mask(point_logits, point_labels)).sum() / num_masks
  loss_dice = (weight * dice_per_mask(point_logits, point_labels)).sum() / num_masks
  return loss_mask, loss_dice, overflow


def layer_losses(pred_logits, pred_masks, targets, indices, num_masks, rng, cfg):
  """Unweighted (loss_ce, loss_mask, loss_dice) of one prediction layer, and the budget overflow.

  Args:
    pred_logits: (B, Q, K+1); pred_masks: (B, Q, h, w); targets: dict of `masks` (B, M, H, W),
    `classes` (B, M), `valid` (B, M); indices: (B, M) from the matcher.
  """
  num_classes = pred_logits.shape[-1] - 1
  labels = class_targets(indices, targets['classes'], pred_logits.shape[1], num_classes)
  class_weights = jnp.ones((num_classes + 1,), jnp.float32).at[-1].set(cfg.no_object_weight)
  loss_ce = weighted_cross_entropy(pred_logits, labels, class_weights)
  loss_mask, loss_dice, overflow = mask_losses(pred_masks, targets['masks'], indices,
                                               targets['valid'], num_masks, rng, cfg)
  return loss_ce, loss_mask, loss_dice, overflow


def _check_inputs(out, targets):
  logits, masks = out['pred_logits'], out['pred_masks']
  if logits.ndim != 4 or masks.ndim != 5 or masks.shape[:3] != logits.shape[:3]:
    raise ValueError(f"out['pred_logits'] must be (L+1, B, Q, K+1) and out['pred_masks'] "
                     f"(L+1, B, Q, h, w), got {logits.shape} and {masks.shape}.")
  b, m = targets['valid'].shape
  if targets['classes'].shape != (b, m) or targets['masks'].shape[:2] != (b, m):
    raise ValueError(f"targets must be masks (B, M, H, W), classes (B, M), valid (B, M), got "
                     f"{targets['masks'].shape}, {targets['classes'].shape}, "
                     f"{targets['valid'].shape}.")
  if logits.shape[1] != b:
    raise ValueError(f"targets batch {b} differs from the predictions' batch {logits.shape[1]}.")


def match_all_layers(out, targets, rng, cfg):
  """Hungarian matching of every prediction layer (fresh uniform points per layer).

  Returns:
    (L+1, B, M) int32 query per target (-1 unmatched / invalid).
  """
  _check_inputs(out, targets)
  num_layers, batch = out['pred_logits'].shape[:2]
  keys = jax.random.split(rng, num_layers)
  cost_fn = lambda args: matcher.matching_cost(
      args[0], args[1], targets['masks'], targets['classes'], args[2], cfg)
  # lax.map (one layer at a time) bounds the peak memory of the point samples.
  cost = lax.map(cost_fn, (out['pred_logits'], out['pred_masks'], keys))  # (L+1, B, Q, M)
  valid = jnp.broadcast_to(targets['valid'], (num_layers,) + targets['valid'].shape)
  flat = matcher.hungarian_match(cost.reshape((num_layers * batch,) + cost.shape[2:]),
                                 valid.reshape(num_layers * batch, -1))
  return flat.reshape(num_layers, batch, -1)


def criterion_from_indices(out, targets, indices, rng, cfg, axis_name=None):
  """The set criterion given the matching.

  Args:
    out: model outputs with `pred_logits` (L+1, B, Q, K+1) and `pred_masks` (L+1, B, Q, h, w).
    targets: `masks` bool (B, M, H, W), `classes` int32 (B, M), `valid` bool (B, M).
    indices: (L+1, B, M) from `match_all_layers`.
    rng: PRNG key for the point sampling.
    cfg: the train config (weights and point-sampling fields).
    axis_name: optional mapped axis to average num_masks over (pmap / shard_map only).

  Returns:
    (loss, metrics): weighted total; metrics hold every unweighted term per layer
    (`loss_ce_{l}`, `loss_mask_{l}`, `loss_dice_{l}`), their sums over layers, `num_masks` and
    `masks_over_budget` (matched masks left out of the point sampling; 0 unless the batch
    exceeds the budget, which `check_mask_budget` rejects on the host first).
  """
  _check_inputs(out, targets)
  num_layers = out['pred_logits'].shape[0]
  num_masks = count_masks(targets['valid'], axis_name)
  keys = jax.random.split(rng, num_layers)
  # Rematerialised: the backward pass keeps only each layer's points (N, P, 2) and recomputes the
  # samples at them, instead of keeping the (N, P) samples and interpolation weights; the
  # candidates, their top_k and the PRNG are not recomputed.
  per_layer = jax.checkpoint(
      lambda args: layer_losses(args[0], args[1], targets, args[2], num_masks, args[3], cfg),
      policy=jax.checkpoint_policies.save_only_these_names('criterion_points'))
  # One layer at a time: each layer's (N, 3P) candidate points alone are large at full size.
  ce, bce, dice, overflow = lax.map(per_layer,
                                    (out['pred_logits'], out['pred_masks'], indices, keys))
  loss = (cfg.class_weight * ce.sum() + cfg.mask_weight * bce.sum()
          + cfg.dice_weight * dice.sum())
  metrics = {'loss_ce': ce.sum(), 'loss_mask': bce.sum(), 'loss_dice': dice.sum(),
             'loss_criterion': loss, 'num_masks': num_masks,
             'masks_over_budget': overflow.max().astype(jnp.float32)}
  for layer in range(num_layers):
    metrics[f'loss_ce_{layer}'] = ce[layer]
    metrics[f'loss_mask_{layer}'] = bce[layer]
    metrics[f'loss_dice_{layer}'] = dice[layer]
  return loss, metrics


def set_criterion(out, targets, rng, cfg, axis_name=None):
  """Matching (per layer) + criterion over all L+1 predictions -> (loss, metrics)."""
  match_rng, point_rng = jax.random.split(rng)
  indices = match_all_layers(out, targets, match_rng, cfg)
  return criterion_from_indices(out, targets, indices, point_rng, cfg, axis_name)
