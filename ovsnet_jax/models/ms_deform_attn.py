"""Multi-scale deformable attention (Deformable DETR / Mask2Former ``MSDeformAttn``) in pure JAX.

Each query attends, per head, to ``P`` points on each of ``L`` feature levels: the points are its
reference point plus learned offsets (normalised per level by (W_l, H_l)), values are read with
bilinear interpolation (``grid_sample(align_corners=False, padding_mode='zeros')``: pixel
coordinate = loc * W - 0.5, corners outside the map read 0), and mixed with weights softmaxed over
the L * P samples of each head.

Sampling implementations (``impl``, config ``model.pixel_decoder.deform_impl``), all exact:
- ``'window'`` (default, lane-dense): each level is zero-padded by one pixel and every position
  holds its 2x2 neighbourhood of one head, a row of 4 * Dh values (128 lanes for Dh = 32: TPU's
  vector width, where a Dh-row would be padded to 128). One gather of one window per sample reads
  all 4 bilinear corners; out-of-map corners read the zero padding. Memory ~ B*Lq*M*L*P*4*Dh
  unpadded: a quarter of ``'gather'`` on TPU, one gather instead of 4 index computations.
- ``'gather'``: one flat gather of the 4 bilinear corners of every sample of every level from the
  value in its native (B, S, M, Dh) layout, then a weighted sum. Memory ~ B*Lq*M*L*P*4*Dh.
- ``'gather_corners'``: the same gather split per bilinear corner, each reduced over the L*P
  samples before the next (a quarter of the intermediate; 4 gathers instead of 1).
- ``'onehot'``: per level, a dense sampling matrix (B, Lq, M, h, w) built from separable one-hot
  bilinear weights (out-of-range corners one-hot to zero), then a matmul with the value. Memory
  ~ B*Lq*M*h*w: only for small maps (tests, low resolution), dense-matmul friendly.
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovsnet_jax.models.layers import xavier_uniform

DEFORM_IMPLS = ('window', 'gather', 'gather_corners', 'onehot')


def _pixel_coords(loc: jax.Array, size) -> jax.Array:
  """Normalised coordinate in [0, 1] -> pixel coordinate (align_corners=False), clipped to
  [-2, size + 1] so far-away samples stay out of range without integer overflow."""
  return jnp.clip(loc * size - 0.5, -2.0, size + 1.0)


def _check_core_inputs(value, spatial_shapes, sampling_locations, attention_weights):
  if value.ndim != 4:
    raise ValueError(f'ms_deform_attn_core: value must be (B, S, M, Dh), got shape {value.shape}')
  _, s, m, _ = value.shape
  total = sum(h * w for h, w in spatial_shapes)
  if total != s:
    raise ValueError(f'ms_deform_attn_core: spatial_shapes {tuple(spatial_shapes)} cover {total} '
                     f'positions but value has S={s}')
  if sampling_locations.ndim != 6 or sampling_locations.shape[-1] != 2:
    raise ValueError('ms_deform_attn_core: sampling_locations must be (B, Lq, M, L, P, 2), got shape '
                     f'{sampling_locations.shape}')
  _, _, m2, num_levels, _, _ = sampling_locations.shape
  if m2 != m or num_levels != len(spatial_shapes):
    raise ValueError(f'ms_deform_attn_core: sampling_locations {sampling_locations.shape} do not match '
                     f'M={m} heads and L={len(spatial_shapes)} levels')
  if attention_weights.shape != sampling_locations.shape[:-1]:
    raise ValueError(f'ms_deform_attn_core: attention_weights must be {sampling_locations.shape[:-1]} '
                     f'(B, Lq, M, L, P), got {attention_weights.shape}')


def _corners(spatial_shapes, sampling_locations, m):
  """The 4 bilinear corners of every sample as rows of the value viewed as (B, S*M, Dh).

  Returns:
    4 pairs (row index int32, bilinear weight with out-of-range corners zeroed), each
    (B, Lq, M, L, P).
  """
  num_levels = len(spatial_shapes)
  shape = (1, 1, 1, num_levels, 1)  # broadcasts against (B, Lq, M, L, P)
  h_l = jnp.array([h for h, _ in spatial_shapes], jnp.int32).reshape(shape)
  w_l = jnp.array([w for _, w in spatial_shapes], jnp.int32).reshape(shape)
  s_l = jnp.array([0] + [h * w for h, w in spatial_shapes][:-1], jnp.int32).cumsum().reshape(shape)
  x = _pixel_coords(sampling_locations[..., 0], w_l)  # (B, Lq, M, L, P)
  y = _pixel_coords(sampling_locations[..., 1], h_l)
  x0f, y0f = jnp.floor(x), jnp.floor(y)
  fx, fy = x - x0f, y - y0f
  x0, y0 = x0f.astype(jnp.int32), y0f.astype(jnp.int32)
  head = jnp.arange(m, dtype=jnp.int32).reshape(1, 1, m, 1, 1)
  corners = []
  for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
    xi, yi = x0 + dx, y0 + dy
    valid = (xi >= 0) & (xi < w_l) & (yi >= 0) & (yi < h_l)
    pos = s_l + jnp.clip(yi, 0, h_l - 1) * w_l + jnp.clip(xi, 0, w_l - 1)  # (B, Lq, M, L, P)
    bil = (fx if dx else 1.0 - fx) * (fy if dy else 1.0 - fy)
    corners.append((pos * m + head, jnp.where(valid, bil, 0.0)))
  return corners


def _core_gather(value, spatial_shapes, sampling_locations, attention_weights):
  """One gather of all corners of all levels; see module docstring."""
  b, s, m, dh = value.shape
  _, lq, _, num_levels, p, _ = sampling_locations.shape
  corners = _corners(spatial_shapes, sampling_locations, m)
  k = num_levels * p * 4
  idx = jnp.stack([i for i, _ in corners], -1).reshape(b, lq * m * k, 1)  # (B, Lq*M*K, 1)
  wts = jnp.stack([w * attention_weights for _, w in corners], -1).reshape(b, lq, m, k)  # (B, Lq, M, K)
  rows = jnp.take_along_axis(value.reshape(b, s * m, dh), idx, axis=1, mode='clip')
  rows = rows.reshape(b, lq, m, k, dh)  # (B, Lq, M, K, Dh)
  out = jnp.einsum('bqmk,bqmkd->bqmd', wts.astype(value.dtype), rows)  # (B, Lq, M, Dh)
  return out.reshape(b, lq, m * dh)


def _core_gather_corners(value, spatial_shapes, sampling_locations, attention_weights):
  """One gather per bilinear corner, each reduced at once; see module docstring."""
  b, s, m, dh = value.shape
  _, lq, _, num_levels, p, _ = sampling_locations.shape
  flat = value.reshape(b, s * m, dh)
  out = jnp.zeros((b, lq, m, dh), jnp.float32)
  for idx, bil in _corners(spatial_shapes, sampling_locations, m):
    rows = jnp.take_along_axis(flat, idx.reshape(b, -1, 1), axis=1, mode='clip')
    rows = rows.reshape(b, lq, m, num_levels * p, dh)  # (B, Lq, M, L*P, Dh)
    wts = (bil * attention_weights).reshape(b, lq, m, num_levels * p).astype(value.dtype)
    out = out + jnp.einsum('bqmk,bqmkd->bqmd', wts, rows)
  return out.astype(value.dtype).reshape(b, lq, m * dh)


def _windows(value, spatial_shapes):
  """(B, S, M, Dh) -> (B, Sw * M, 4 * Dh): per level zero-padded by one pixel on every side, each
  window (y, x) in [0, h] x [0, w] holds padded pixels (y, x), (y, x+1), (y+1, x), (y+1, x+1), i.e.
  the original pixels (y-1, x-1) .. (y, x); Sw = sum (h_l + 1) * (w_l + 1)."""
  b, _, m, dh = value.shape
  out, start = [], 0
  for h, w in spatial_shapes:
    v = value[:, start:start + h * w].reshape(b, h, w, m, dh)
    start += h * w
    vp = jnp.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))  # (B, h+2, w+2, M, Dh)
    win = jnp.concatenate([vp[:, :-1, :-1], vp[:, :-1, 1:], vp[:, 1:, :-1], vp[:, 1:, 1:]], -1)
    out.append(win.reshape(b, (h + 1) * (w + 1), m, 4 * dh))  # (B, (h+1)(w+1), M, 4 Dh)
  return jnp.concatenate(out, 1).reshape(b, -1, 4 * dh)


def _sample_windows(windows, spatial_shapes, sampling_locations, attention_weights):
  """Windows (B, Sw*M, 4 Dh) sampled at (B, Lq, M, L, P, 2), weighted -> (B, Lq, M * Dh)."""
  b, lq, m, num_levels, p, _ = sampling_locations.shape
  dh = windows.shape[-1] // 4
  shape = (1, 1, 1, num_levels, 1)  # broadcasts against (B, Lq, M, L, P)
  h_l = jnp.array([h for h, _ in spatial_shapes], jnp.int32).reshape(shape)
  w_l = jnp.array([w for _, w in spatial_shapes], jnp.int32).reshape(shape)
  s_l = jnp.array([0] + [(h + 1) * (w + 1) for h, w in spatial_shapes][:-1], jnp.int32).cumsum().reshape(shape)
  x = _pixel_coords(sampling_locations[..., 0], w_l)  # (B, Lq, M, L, P)
  y = _pixel_coords(sampling_locations[..., 1], h_l)
  x0f, y0f = jnp.floor(x), jnp.floor(y)
  fx, fy = x - x0f, y - y0f
  x0, y0 = x0f.astype(jnp.int32), y0f.astype(jnp.int32)
  # A window with any corner on the map has its top-left padded pixel (y0+1, x0+1) in [0, h] x [0, w].
  inside = (x0 >= -1) & (x0 < w_l) & (y0 >= -1) & (y0 < h_l)
  pos = s_l + (jnp.clip(y0, -1, h_l - 1) + 1) * (w_l + 1) + jnp.clip(x0, -1, w_l - 1) + 1
  head = jnp.arange(m, dtype=jnp.int32).reshape(1, 1, m, 1, 1)
  idx = (pos * m + head).reshape(b, lq * m * num_levels * p, 1)
  aw = jnp.where(inside, attention_weights, 0.0)
  wts = jnp.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], -1) * aw[..., None]
  wts = wts.reshape(b, lq, m, num_levels * p, 4, 1).astype(windows.dtype)  # (B, Lq, M, K, 4, 1)
  rows = jnp.take_along_axis(windows, idx, axis=1, mode='clip')  # (B, Lq*M*K, 4 Dh): lane-dense
  rows = rows.reshape(b, lq, m, num_levels * p, 4, dh)
  out = jnp.sum(wts * rows, axis=(3, 4))  # (B, Lq, M, Dh)
  return out.reshape(b, lq, m * dh)


def _axis_weights(coord: jax.Array, size: int) -> jax.Array:
  """Pixel coordinate (...,) -> linear-interpolation weights over the axis (..., size); corners
  outside [0, size) get no weight (jax.nn.one_hot of an out-of-range index is all zeros)."""
  c0 = jnp.floor(coord)
  frac = coord - c0
  c0 = c0.astype(jnp.int32)
  return (jax.nn.one_hot(c0, size, dtype=coord.dtype) * (1.0 - frac)[..., None]
          + jax.nn.one_hot(c0 + 1, size, dtype=coord.dtype) * frac[..., None])


def _core_onehot(value, spatial_shapes, sampling_locations, attention_weights):
  """Per level, a dense separable sampling matrix times the value; see module docstring."""
  b, _, m, dh = value.shape
  lq = sampling_locations.shape[1]
  out = jnp.zeros((b, lq, m, dh), jnp.float32)
  start = 0
  for level, (h, w) in enumerate(spatial_shapes):
    v = value[:, start:start + h * w].reshape(b, h, w, m, dh)  # (B, h, w, M, Dh)
    start += h * w
    loc = sampling_locations[:, :, :, level]  # (B, Lq, M, P, 2)
    ay = _axis_weights(_pixel_coords(loc[..., 1], h), h)  # (B, Lq, M, P, h)
    ax = _axis_weights(_pixel_coords(loc[..., 0], w), w)  # (B, Lq, M, P, w)
    ay = ay * attention_weights[:, :, :, level, :, None]
    sample = jnp.einsum('bqmph,bqmpw->bqmhw', ay, ax)  # (B, Lq, M, h, w)
    out = out + jnp.einsum('bqmhw,bhwmd->bqmd', sample.astype(value.dtype), v)
  return out.astype(value.dtype).reshape(b, lq, m * dh)


_SAMPLERS = {'gather': _core_gather, 'gather_corners': _core_gather_corners, 'onehot': _core_onehot,
             'window': _sample_windows}


def _query_chunks(fn, sampling_locations, attention_weights, chunk: int):
  """fn over chunks of `chunk` queries (lax.map; the last chunk zero-padded), concatenated."""
  b, lq = attention_weights.shape[:2]
  n = -(-lq // chunk)
  pad = n * chunk - lq
  def split(x):  # (B, Lq, ...) -> (n, B, chunk, ...)
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((b, n, chunk) + x.shape[2:]), 1, 0)
  out = jax.lax.map(lambda xs: fn(*xs), (split(sampling_locations), split(attention_weights)))  # (n, B, chunk, C)
  return jnp.moveaxis(out, 0, 1).reshape(b, n * chunk, -1)[:, :lq]


def ms_deform_attn_core(value: jax.Array, spatial_shapes: Sequence[tuple[int, int]],
                        sampling_locations: jax.Array, attention_weights: jax.Array,
                        impl: str = 'window', query_chunk: int = 0, remat: bool = False) -> jax.Array:
  """Bilinear multi-scale sampling and weighting (Mask2Former ``ms_deform_attn_core_pytorch``).

  Args:
    value: (B, S, M, Dh), the L levels flattened row-major and concatenated, S = sum h_l * w_l.
    spatial_shapes: static ((h_0, w_0), ..., (h_{L-1}, w_{L-1})).
    sampling_locations: (B, Lq, M, L, P, 2) normalised (x, y); [0, 1] covers the map.
    attention_weights: (B, Lq, M, L, P).
    impl: one of DEFORM_IMPLS.
    query_chunk: > 0: sample `query_chunk` queries at a time (lax.map), bounding the
      (B, chunk, M, L*P, 4*Dh) intermediate; 0: all at once.
    remat: recompute the sampling in the backward pass (jax.checkpoint per chunk) instead of
      keeping its intermediate.

  Returns:
    (B, Lq, M * Dh).
  """
  spatial_shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
  _check_core_inputs(value, spatial_shapes, sampling_locations, attention_weights)
  if impl not in _SAMPLERS:
    raise ValueError(f'deform_impl: expected one of {DEFORM_IMPLS}, got {impl!r}')
  if query_chunk < 0:
    raise ValueError(f'deform_query_chunk: expected >= 0 (0 = no chunking), got {query_chunk}')
  source = _windows(value, spatial_shapes) if impl == 'window' else value
  fn = lambda loc, w: _SAMPLERS[impl](source, spatial_shapes, loc, w)
  if remat:
    fn = jax.checkpoint(fn)
  if query_chunk and sampling_locations.shape[1] > query_chunk:
    return _query_chunks(fn, sampling_locations, attention_weights, query_chunk)
  return fn(sampling_locations, attention_weights)


def sampling_offset_bias_init(num_heads: int, num_levels: int, num_points: int):
  """Mask2Former's offset bias: head h points along angle 2 pi h / M (scaled so the larger of
  |cos|, |sin| is 1), point i at (i + 1) times that, the same on every level."""
  def init(key, shape, dtype=jnp.float32):
    del key
    theta = jnp.arange(num_heads, dtype=jnp.float32) * (2.0 * math.pi / num_heads)
    grid = jnp.stack([jnp.cos(theta), jnp.sin(theta)], -1)  # (M, 2)
    grid = grid / jnp.abs(grid).max(-1, keepdims=True)
    scale = jnp.arange(1, num_points + 1, dtype=jnp.float32)  # (P,)
    grid = grid[:, None, None, :] * scale[None, None, :, None]  # (M, 1, P, 2)
    grid = jnp.broadcast_to(grid, (num_heads, num_levels, num_points, 2))
    return grid.reshape(shape).astype(dtype)
  return init


class MSDeformAttn(nn.Module):
  """Multi-scale deformable attention with Mask2Former's parameters and init.

  Attributes:
    d_model: C, input/output width.
    num_levels: L.
    num_heads: M (C % M == 0).
    num_points: P per head and level.
    impl: sampling implementation, one of DEFORM_IMPLS.
    query_chunk: queries sampled at a time (0 = all); see ``ms_deform_attn_core``.
    remat: recompute the sampling in the backward pass instead of keeping its (B, Lq, M, K, Dh)
      intermediate (jax.checkpoint): far less memory for training, some more time.
    dtype: compute dtype.
  """
  d_model: int = 256
  num_levels: int = 3
  num_heads: int = 8
  num_points: int = 4
  impl: str = 'window'
  query_chunk: int = 0
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query: jax.Array, reference_points: jax.Array, value_in: jax.Array,
               spatial_shapes: Sequence[tuple[int, int]]) -> jax.Array:
    """Deformable attention of ``query`` over the flattened multi-scale ``value_in``.

    Args:
      query: (B, Lq, C) (content + position embedding).
      reference_points: (B or 1, Lq, L, 2) normalised (x, y) per level.
      value_in: (B, S, C), levels flattened and concatenated.
      spatial_shapes: static ((h_l, w_l),) * L.

    Returns:
      (B, Lq, C).
    """
    c, m, num_levels, p = self.d_model, self.num_heads, self.num_levels, self.num_points
    if c % m:
      raise ValueError(f'MSDeformAttn: d_model ({c}) must be divisible by num_heads ({m})')
    if len(spatial_shapes) != num_levels:
      raise ValueError(f'MSDeformAttn: expected {num_levels} spatial_shapes, got {len(spatial_shapes)}')
    if reference_points.shape[-2:] != (num_levels, 2):
      raise ValueError(f'MSDeformAttn: reference_points must be (B, Lq, {num_levels}, 2), got '
                       f'{reference_points.shape}')
    b, lq, _ = query.shape
    value = nn.Dense(c, dtype=self.dtype, kernel_init=xavier_uniform, name='value_proj')(value_in)
    value = value.reshape(b, value.shape[1], m, c // m)  # (B, S, M, Dh)
    offsets = nn.Dense(m * num_levels * p * 2, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                       bias_init=sampling_offset_bias_init(m, num_levels, p),
                       name='sampling_offsets')(query)
    offsets = offsets.astype(jnp.float32).reshape(b, lq, m, num_levels, p, 2)
    logits = nn.Dense(m * num_levels * p, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                      name='attention_weights')(query)
    weights = jax.nn.softmax(logits.astype(jnp.float32).reshape(b, lq, m, num_levels * p), axis=-1)
    weights = weights.reshape(b, lq, m, num_levels, p)  # (B, Lq, M, L, P)
    normalizer = jnp.array([(w, h) for h, w in spatial_shapes], jnp.float32)  # (L, 2) as (x, y)
    locations = (reference_points[:, :, None, :, None, :].astype(jnp.float32)
                 + offsets / normalizer[None, None, None, :, None, :])  # (B, Lq, M, L, P, 2)
    out = ms_deform_attn_core(value, spatial_shapes, locations, weights.astype(value.dtype), self.impl,
                              self.query_chunk, self.remat)  # (B, Lq, C)
    return nn.Dense(c, dtype=self.dtype, kernel_init=xavier_uniform, name='output_proj')(out)
