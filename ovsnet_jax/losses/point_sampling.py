"""Point sampling of mask logits and targets (Mask2Former / detectron2 PointRend semantics).

`point_sample` matches `torch.nn.functional.grid_sample(input, 2 * coords - 1, mode='bilinear',
padding_mode='zeros', align_corners=False)`: a normalised point (x, y) in [0, 1] sits at pixel
coordinate (x * w - 0.5, y * h - 0.5), and neighbours outside the map contribute zero.
Coordinates are normalised, so predictions at stride 4 and targets at input resolution are sampled
at the same places.
"""
import jax
import jax.numpy as jnp
from jax import lax


def point_sample(maps, coords):
  """Bilinear samples of every map at the same points.

  Args:
    maps: (N, h, w) float or bool maps (bool is sampled as 0/1).
    coords: (P, 2) normalised (x, y) in [0, 1].

  Returns:
    (N, P) float32 (or the float dtype of `maps`).
  """
  if maps.ndim != 3 or coords.ndim != 2 or coords.shape[-1] != 2:
    raise ValueError(f'point_sample: expected maps (N, h, w) and coords (P, 2), got '
                     f'{maps.shape} and {coords.shape}.')
  h, w = maps.shape[-2:]
  dtype = maps.dtype if jnp.issubdtype(maps.dtype, jnp.floating) else jnp.float32
  coords = coords.astype(jnp.float32)
  x = coords[:, 0] * w - 0.5  # (P,) pixel coordinates
  y = coords[:, 1] * h - 0.5
  x0 = jnp.floor(x)
  y0 = jnp.floor(y)
  wx1 = x - x0
  wy1 = y - y0
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)
  out = jnp.zeros((maps.shape[0], coords.shape[0]), dtype)  # (N, P)
  for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
    for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
      yi = y0 + dy
      xi = x0 + dx
      inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)  # (P,)
      values = maps[:, jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)].astype(dtype)  # (N, P)
      weight = jnp.where(inside, wx * wy, 0.0).astype(dtype)  # (P,)
      out = out + values * weight[None, :]
  return out


def point_sample_each(maps, coords):
  """Samples each map at its own points.

  Args:
    maps: (N, h, w).
    coords: (N, P, 2) normalised (x, y).

  Returns:
    (N, P).
  """
  return jax.vmap(lambda m, c: point_sample(m[None], c)[0])(maps, coords)


def select_uncertain_points(mask_logits, candidates, random_points, num_uncertain):
  """Keeps the `num_uncertain` most uncertain candidates and appends the random points.

  This is detectron2's `get_uncertain_point_coords_with_randomness` with its random draws given:
  uncertainty = -|logit| at each candidate, top-k per mask.

  Args:
    mask_logits: (N, h, w) mask logits.
    candidates: (N, P_over, 2) candidate points (uniform, oversampled).
    random_points: (N, P_rand, 2) uniform points appended unchanged.
    num_uncertain: static int, how many candidates to keep.

  Returns:
    (N, num_uncertain + P_rand, 2) points.
  """
  logits = point_sample_each(mask_logits, candidates)  # (N, P_over)
  uncertainty = -jnp.abs(logits)
  _, top = lax.top_k(uncertainty, num_uncertain)  # (N, num_uncertain)
  chosen = jnp.take_along_axis(candidates, top[..., None], axis=1)  # (N, num_uncertain, 2)
  return jnp.concatenate([chosen, random_points.astype(chosen.dtype)], axis=1)


RNG_IMPLS = ('threefry', 'rbg', 'auto')


def uniform_points(rng, shape, impl='threefry'):
  """Uniform float32 in [0, 1) of `shape`, drawn with the PRNG `impl`.

  'threefry' is `jax.random.uniform(rng, ...)` itself. 'rbg' seeds XLA's RngBitGenerator from
  `rng` (the same uniform distribution; on TPU the hardware generator, much cheaper than
  threefry's integer rounds; on XLA:CPU it measured slower: 74 vs 59 ms for 12 x 37632 x 2).
  'auto' is 'threefry' when lowered for the CPU and 'rbg' elsewhere (`lax.platform_dependent`).
  """
  if impl == 'threefry':
    return jax.random.uniform(rng, shape, jnp.float32)
  if impl == 'rbg':
    seed = jax.random.bits(rng, (4,), jnp.uint32)
    return jax.random.uniform(jax.random.wrap_key_data(seed, impl='rbg'), shape, jnp.float32)
  if impl == 'auto':
    return lax.platform_dependent(rng, cpu=lambda k: uniform_points(k, shape, 'threefry'),
                                  default=lambda k: uniform_points(k, shape, 'rbg'))
  raise ValueError(f'point_rng: expected one of {RNG_IMPLS}, got {impl!r}.')


def uncertain_point_coords(mask_logits, rng, num_points, oversample_ratio, importance_ratio,
                           rng_impl='threefry'):
  """Importance-sampled points per mask (Mask2Former's training points), under stop_gradient.

  Args:
    mask_logits: (N, h, w) mask logits.
    rng: PRNG key.
    num_points: P, points per mask.
    oversample_ratio: candidates drawn = int(P * oversample_ratio).
    importance_ratio: int(importance_ratio * P) points come from the most uncertain candidates,
      the rest are uniform.
    rng_impl: PRNG of the uniform draws ('threefry' | 'rbg' | 'auto', see `uniform_points`).

  Returns:
    (N, P, 2) normalised (x, y) points.
  """
  n = mask_logits.shape[0]
  num_candidates = int(num_points * oversample_ratio)
  num_uncertain = int(importance_ratio * num_points)
  if num_candidates < num_uncertain:
    raise ValueError(f'oversample_ratio={oversample_ratio} gives {num_candidates} candidates, '
                     f'fewer than the {num_uncertain} importance-sampled points.')
  rng_candidates, rng_random = jax.random.split(rng)
  candidates = uniform_points(rng_candidates, (n, num_candidates, 2), rng_impl)
  random_points = uniform_points(rng_random, (n, num_points - num_uncertain, 2), rng_impl)
  points = select_uncertain_points(lax.stop_gradient(mask_logits.astype(jnp.float32)),
                                   candidates, random_points, num_uncertain)
  return lax.stop_gradient(points)
