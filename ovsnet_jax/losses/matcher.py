"""Exact Hungarian matching on device and the Mask2Former / FC-CLIP matching cost.

`hungarian_match` solves the rectangular linear assignment problem exactly with the
shortest-augmenting-path algorithm (Jonker-Volgenant style, with row/column potentials) written
with `lax.while_loop`/`fori_loop`, so it runs inside a jitted train step and vmaps over the batch.
Its assignments have the same total cost as `scipy.optimize.linear_sum_assignment`.

`matching_cost` is the cost of Mask2Former / FC-CLIP (`fcclip/modeling/matcher.py`):
  C = class_weight * (-softmax(logits)[target class])
    + mask_weight * BCE + dice_weight * dice,
with BCE and dice computed in fp32 on `num_points` points drawn uniformly at random, one set of
points shared by all masks of an image.
"""
import jax
import jax.numpy as jnp
from jax import lax

from ovsnet_jax.losses import point_sampling

_HIGHEST = lax.Precision.HIGHEST


def _augment_row(row, state, cost, active):
  """Adds `row` to the matching along a shortest augmenting path (one Dijkstra pass).

  Args:
    row: int32 scalar, the row to add.
    state: (u (N,), v (N+1,), p (N+1,)) row potentials, column potentials and for each column the
      row assigned to it (-1 free); column N is the virtual start column.
    cost: (N, N) cost, +inf where an assignment is not allowed.
    active: bool scalar; when False the state is returned unchanged.

  Returns:
    The updated state.
  """
  u, v, p = state
  n = cost.shape[0]
  p = p.at[n].set(row)
  minv = jnp.full((n,), jnp.inf, cost.dtype)  # (N,) reduced-cost frontier
  way = jnp.full((n,), n, jnp.int32)  # (N,) previous column on the shortest path
  used_cols = jnp.zeros((n,), bool)
  used_rows = jnp.zeros((n,), bool)

  def search_cond(carry):
    _, _, p, _, _, _, _, j0, steps = carry
    return (p[j0] != -1) & (steps <= n)

  def search_body(carry):
    u, v, p, minv, way, used_cols, used_rows, j0, steps = carry
    used_cols = used_cols.at[j0].set(True, mode='drop')  # j0 = N (virtual) is dropped
    i0 = p[j0]
    used_rows = used_rows.at[i0].set(True)
    reduced = cost[i0] - u[i0] - v[:n]  # (N,)
    better = ~used_cols & (reduced < minv)
    minv = jnp.where(better, reduced, minv)
    way = jnp.where(better, j0, way)
    masked = jnp.where(used_cols, jnp.inf, minv)
    j1 = jnp.argmin(masked).astype(jnp.int32)
    delta = masked[j1]
    u = jnp.where(used_rows, u + delta, u)
    v = v.at[:n].set(jnp.where(used_cols, v[:n] - delta, v[:n]))
    v = v.at[n].add(-delta)
    minv = jnp.where(used_cols, minv, minv - delta)
    return u, v, p, minv, way, used_cols, used_rows, j1, steps + 1

  # An inactive row starts with `steps` past the bound, so neither loop runs.
  init = (u, v, p, minv, way, used_cols, used_rows, jnp.int32(n),
          jnp.where(active, 0, n + 1).astype(jnp.int32))
  u, v, p, _, way, _, _, j0, _ = lax.while_loop(search_cond, search_body, init)

  def path_cond(carry):
    _, j0, steps = carry
    return (j0 != n) & (steps <= n)

  def path_body(carry):
    p, j0, steps = carry
    j1 = way[j0]
    p = p.at[j0].set(p[j1])
    return p, j1, steps + 1

  j0 = jnp.where(active, j0, n)
  p, _, _ = lax.while_loop(path_cond, path_body, (p, j0, jnp.int32(0)))
  return u, v, p


def _assign(cost, rows_to_add):
  """Min-cost matching of every row in `rows_to_add` to a distinct column.

  Args:
    cost: (N, N) float, +inf where not allowed. Every added row must reach enough finite columns.
    rows_to_add: (N,) bool.

  Returns:
    (N,) int32: for each column, its row or -1.
  """
  n = cost.shape[0]
  order = jnp.argsort(~rows_to_add, stable=True).astype(jnp.int32)  # rows to add first
  num_rows = rows_to_add.sum()
  state = (jnp.zeros((n,), cost.dtype), jnp.zeros((n + 1,), cost.dtype),
           jnp.full((n + 1,), -1, jnp.int32))

  def body(carry):
    i, state = carry
    return i + 1, _augment_row(order[i], state, cost, i < num_rows)

  # Loops only over the rows to add (under vmap: the largest count in the batch).
  _, (_, _, p) = lax.while_loop(lambda carry: carry[0] < num_rows, body, (jnp.int32(0), state))
  return p[:n]


def _hungarian_single(cost, valid):
  """`hungarian_match` for one image: cost (Q, M), valid (M,) -> (M,) int32."""
  q, m = cost.shape
  n = max(q, m)
  cost = cost.astype(jnp.float32)
  inf = jnp.float32(jnp.inf)
  num_valid = valid.sum()
  # Case 1 (num_valid <= Q): rows = targets, columns = queries; add every valid target.
  by_target = jnp.full((n, n), inf).at[:m, :q].set(cost.T)  # (N, N)
  # Case 2 (num_valid > Q): rows = queries, columns = valid targets; add every query.
  by_query = jnp.full((n, n), inf).at[:q, :m].set(jnp.where(valid[None, :], cost, inf))
  targets_as_rows = num_valid <= q
  square = jnp.where(targets_as_rows, by_target, by_query)  # (N, N)
  idx = jnp.arange(n)
  rows_to_add = jnp.where(targets_as_rows, (idx < m) & jnp.pad(valid, (0, n - m)), idx < q)
  col_to_row = _assign(square, rows_to_add)  # (N,)
  # Case 1: column = query, row = target -> invert.  Case 2: column = target, row = query.
  query_of_target_1 = jnp.full((n,), -1, jnp.int32).at[
      jnp.where(col_to_row >= 0, col_to_row, n)].set(idx.astype(jnp.int32), mode='drop')
  query_of_target = jnp.where(targets_as_rows, query_of_target_1, col_to_row)[:m]
  return jnp.where(valid, query_of_target, -1)


def hungarian_match(cost, valid):
  """Exact minimum-cost assignment of targets to queries, batched.

  Same total cost as `scipy.optimize.linear_sum_assignment(cost[b][:, valid[b]])`: when there are
  more valid targets than queries every query is matched and the remaining targets are not.

  Args:
    cost: (B, Q, M) float cost of matching query q to target m (finite where valid).
    valid: (B, M) bool, False for padded targets (never matched, their costs are ignored).

  Returns:
    (B, M) int32: for each target, the index of its query, -1 if unmatched or invalid.
  """
  if cost.ndim != 3 or valid.shape != (cost.shape[0], cost.shape[2]):
    raise ValueError(f'hungarian_match: expected cost (B, Q, M) and valid (B, M), got cost '
                     f'{cost.shape} and valid {valid.shape}.')
  cost = lax.stop_gradient(cost)
  return jax.vmap(_hungarian_single)(cost, valid.astype(bool))


def pairwise_mask_costs(pred_points, target_points):
  """BCE and dice costs between every prediction and every target (FC-CLIP's batch losses).

  Args:
    pred_points: (Q, P) mask logits at the sampled points.
    target_points: (M, P) target values in [0, 1] at the same points.

  Returns:
    (bce (Q, M), dice (Q, M)), fp32.
  """
  x = pred_points.astype(jnp.float32)
  t = target_points.astype(jnp.float32)
  num_points = x.shape[-1]
  pos = jax.nn.softplus(-x)  # (Q, P) BCE against 1
  neg = jax.nn.softplus(x)  # (Q, P) BCE against 0
  bce = (jnp.einsum('qp,mp->qm', pos, t, precision=_HIGHEST)
         + jnp.einsum('qp,mp->qm', neg, 1.0 - t, precision=_HIGHEST)) / num_points
  prob = jax.nn.sigmoid(x)
  numerator = 2.0 * jnp.einsum('qp,mp->qm', prob, t, precision=_HIGHEST)
  denominator = prob.sum(-1)[:, None] + t.sum(-1)[None, :]
  dice = 1.0 - (numerator + 1.0) / (denominator + 1.0)
  return bce, dice


def matching_cost(pred_logits, pred_masks, target_masks, target_classes, rng, cfg):
  """The Mask2Former / FC-CLIP matching cost for one prediction layer, under stop_gradient.

  Args:
    pred_logits: (B, Q, K+1) class logits (last column = no object).
    pred_masks: (B, Q, h, w) mask logits.
    target_masks: (B, M, H, W) bool masks at input resolution.
    target_classes: (B, M) int32 (entries of invalid targets are ignored by the matcher).
    rng: PRNG key for the uniform points.
    cfg: train config (`class_weight`, `mask_weight`, `dice_weight`, `num_points`).

  Returns:
    (B, Q, M) fp32 cost.
  """
  pred_logits = lax.stop_gradient(pred_logits).astype(jnp.float32)
  pred_masks = lax.stop_gradient(pred_masks).astype(jnp.float32)
  batch = pred_logits.shape[0]
  num_classes = pred_logits.shape[-1]
  prob = jax.nn.softmax(pred_logits, axis=-1)  # (B, Q, K+1)
  classes = jnp.clip(target_classes, 0, num_classes - 1)
  cost_class = -jnp.take_along_axis(prob, classes[:, None, :], axis=2)  # (B, Q, M)
  coords = jax.random.uniform(rng, (batch, cfg.num_points, 2), jnp.float32)  # (B, P, 2)
  pred_points = jax.vmap(point_sampling.point_sample)(pred_masks, coords)  # (B, Q, P)
  target_points = jax.vmap(point_sampling.point_sample)(target_masks, coords)  # (B, M, P)
  bce, dice = jax.vmap(pairwise_mask_costs)(pred_points, target_points)  # (B, Q, M) each
  return (cfg.mask_weight * bce + cfg.class_weight * cost_class + cfg.dice_weight * dice)
