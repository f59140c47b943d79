"""Building blocks shared by the pixel decoder and the masked-attention decoder.

- ``MLP``: Mask2Former's ``MLP`` (Linear -> ReLU -> ... -> Linear), e.g. ``mask_embed``
  MLP(256, 256, 256, 3).
- ``sine_position_embedding``: DETR / Mask2Former ``PositionEmbeddingSine(C/2, normalize=True)``.
- ``resize_bilinear``: PyTorch ``F.interpolate(mode='bilinear', align_corners=False)`` on NHWC maps.
- ``ConvNorm``: detectron2 ``Conv2d(..., norm=GroupNorm, activation=...)``.
- Initialisers with PyTorch's semantics (``torch_linear_init``, ``xavier_uniform``, ``c2_xavier_fill``).

PyTorch LayerNorm/GroupNorm use eps 1e-5 (flax defaults to 1e-6): use ``NORM_EPS``.
"""
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

NORM_EPS = 1e-5

# nn.Linear's default weight init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
# torch.nn.init.xavier_uniform_: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
xavier_uniform = nn.initializers.xavier_uniform()
# detectron2 weight_init.c2_xavier_fill: kaiming_uniform(a=1): U(-sqrt(3/fan_in), sqrt(3/fan_in)).
c2_xavier_fill = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')
# torch.nn.Embedding's default init: N(0, 1).
embedding_init = nn.initializers.normal(stddev=1.0)

# LayerNorm with PyTorch's eps, computed in float32 whatever the compute dtype.
LayerNorm = functools.partial(nn.LayerNorm, epsilon=NORM_EPS, dtype=jnp.float32, use_fast_variance=False)


class MLP(nn.Module):
  """Linear layers with ReLU in between (none after the last).

  Attributes:
    hidden_dim: width of the hidden layers.
    output_dim: width of the output.
    num_layers: number of Linear layers (>= 1).
    dtype: compute dtype (params stay float32).
  """
  hidden_dim: int
  output_dim: int
  num_layers: int
  dtype: Any = jnp.float32
  kernel_init: Callable = torch_linear_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(..., C_in) -> (..., output_dim)."""
    if self.num_layers < 1:
      raise ValueError(f'MLP.num_layers: expected >= 1, got {self.num_layers}')
    for i in range(self.num_layers):
      width = self.output_dim if i == self.num_layers - 1 else self.hidden_dim
      x = nn.Dense(width, dtype=self.dtype, kernel_init=self.kernel_init, name=f'layers_{i}')(x)
      if i < self.num_layers - 1:
        x = nn.relu(x)
    return x


def sine_position_embedding(height: int, width: int, num_feats: int, temperature: float = 10000.0,
                            normalize: bool = True, scale: float = 2 * math.pi) -> jax.Array:
  """DETR's 2-D sine embedding of an unpadded (height, width) grid, as Mask2Former computes it.

  Row/column indices 1..n are (optionally) normalised to (0, scale]: ``i / (n + 1e-6) * scale``.
  Channel ``2k`` holds sin(pos / T^(2k/F)), channel ``2k+1`` cos(pos / T^(2k/F)); the y part comes
  first, then the x part.

  Args:
    height: grid height h.
    width: grid width w.
    num_feats: F, features per axis (the embedding has 2F channels; F must be even).
    temperature: T.
    normalize: normalise positions to (0, scale].
    scale: the normalisation scale (2 pi).

  Returns:
    (h, w, 2F) float32.
  """
  if num_feats % 2:
    raise ValueError(f'sine_position_embedding: num_feats must be even, got {num_feats}')
  y = jnp.arange(1, height + 1, dtype=jnp.float32)  # (h,)
  x = jnp.arange(1, width + 1, dtype=jnp.float32)  # (w,)
  if normalize:
    y = y / (height + 1e-6) * scale
    x = x / (width + 1e-6) * scale
  k = jnp.arange(num_feats) // 2
  dim_t = temperature ** (2.0 * k.astype(jnp.float32) / num_feats)  # (F,)

  def embed(pos):  # (n,) -> (n, F), sin/cos interleaved
    angles = pos[:, None] / dim_t  # (n, F)
    return jnp.stack([jnp.sin(angles[:, 0::2]), jnp.cos(angles[:, 1::2])], axis=-1).reshape(len(pos), -1)

  pos_y = jnp.broadcast_to(embed(y)[:, None, :], (height, width, num_feats))
  pos_x = jnp.broadcast_to(embed(x)[None, :, :], (height, width, num_feats))
  return jnp.concatenate([pos_y, pos_x], axis=-1)  # (h, w, 2F)


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize of NHWC maps with PyTorch ``align_corners=False`` semantics (no antialiasing).

  Args:
    x: (B, h, w, C).
    size: target (h', w').

  Returns:
    (B, h', w', C) in x's dtype.
  """
  if x.ndim != 4:
    raise ValueError(f'resize_bilinear: expected (B, h, w, C), got shape {x.shape}')
  b, h, w, c = x.shape
  if (h, w) == tuple(size):
    return x
  return jax.image.resize(x, (b, *size, c), method='bilinear', antialias=False)


class ConvNorm(nn.Module):
  """Conv2d -> GroupNorm (eps 1e-5, fp32) -> optional ReLU, on NHWC maps.

  Attributes:
    features: output channels.
    kernel_size: square kernel size (padding keeps the size: k // 2).
    use_bias: conv bias (detectron2 drops it when a norm follows, except Mask2Former's input_proj).
    num_groups: GroupNorm groups (0 = no norm).
    relu: apply ReLU last.
    kernel_init: conv weight init.
    dtype: compute dtype.
  """
  features: int
  kernel_size: int = 1
  use_bias: bool = True
  num_groups: int = 32
  relu: bool = False
  kernel_init: Callable = c2_xavier_fill
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, h, w, C_in) -> (B, h, w, features)."""
    pad = self.kernel_size // 2
    x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), padding=((pad, pad), (pad, pad)),
                use_bias=self.use_bias, kernel_init=self.kernel_init, dtype=self.dtype, name='conv')(x)
    if self.num_groups:
      if self.features % self.num_groups:
        raise ValueError(f'ConvNorm: features ({self.features}) must be divisible by num_groups '
                         f'({self.num_groups})')
      x = nn.GroupNorm(num_groups=self.num_groups, epsilon=NORM_EPS, dtype=jnp.float32,
                       use_fast_variance=False, name='norm')(x)
    if self.relu:
      x = nn.relu(x)
    return x


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / max(||x||, 1e-12) along `axis`, with a finite gradient at x = 0 (jnp.linalg.norm's is NaN there)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), 1e-24))
