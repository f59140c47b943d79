"""The frozen CLIP image tower: timm's ConvNeXt trunk plus open_clip's projection head.

Layout follows `timm/models/convnext.py` (conv_mlp=False, patch stem, ls_init_value set) and
`open_clip/timm_model.py` (timm_pool '' keeps timm's avg-pool -> LayerNorm head, then open_clip's
'linear' or 'mlp' projection). All LayerNorms use eps 1e-6 (timm's LayerNorm/LayerNorm2d default).

Depthwise 7x7 convolutions (`DepthwiseConv`, 36 in ConvNeXt-B): `dwconv` picks the formulation,
both exact (same params, same sums up to float reassociation):
  'conv'    - `lax.conv_general_dilated` with feature_group_count = C (fast on TPU / GPU);
  'shifted' - a sum of k*k shifted multiply-adds of the padded input (XLA:CPU's grouped convolution
              is 10-20x slower than this: (1, 64, 64, 128) 33 ms vs 1.8 ms), with a hand-written
              VJP (autodiff's made the backward 10x the forward: CLIP pretraining on CPU);
  'auto'    - 'shifted' when lowered for the CPU, 'conv' elsewhere, chosen at lowering time
              (`lax.platform_dependent`), so AOT compiles for a TPU topology on a CPU host get 'conv'.

Param tree of `CLIPVisual`:
  {'trunk': {'stem_conv', 'stem_norm', 'stage{0..3}': {['downsample_norm', 'downsample_conv'],
   'block{j}': {'conv_dw', 'norm', 'fc1', 'fc2', 'gamma'}}},
   'head_norm', 'proj' | 'mlp': {'fc1', 'fc2'}}
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovsnet_jax.models import clip  # Mutual import: only used at call time.

LN_EPS = 1e-6  # timm LayerNorm / LayerNorm2d default, used by every ConvNeXt norm.
DWCONV_IMPLS = ('auto', 'conv', 'shifted')


def depthwise_conv_grouped(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """'Same'-padded depthwise conv as a grouped convolution: (B, H, W, C), (k, k, 1, C) -> (B, H, W, C)."""
  k = kernel.shape[0]
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=((k // 2, k // 2),) * 2,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1])


def _shifted_sum(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """sum_ij pad(x)[:, i:i+H, j:j+W] * kernel[i, j]: (B, H, W, C), (k, k, 1, C) -> (B, H, W, C)."""
  k = kernel.shape[0]
  if k % 2 != 1 or kernel.shape[1] != k:
    raise ValueError(f'depthwise_conv_shifted: expected an odd square kernel (k, k, 1, C), got {kernel.shape}')
  h, w = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))  # (B, H+k-1, W+k-1, C)
  out = None
  for i in range(k):
    for j in range(k):
      term = xp[:, i:i + h, j:j + w, :] * kernel[i, j, 0]  # (B, H, W, C)
      out = term if out is None else out + term
  return out


KERNEL_GRAD_TILE = 16  # columns per tile of `_shifted_kernel_grad`'s banded products


def _shifted_kernel_grad(x: jax.Array, g: jax.Array, k: int) -> jax.Array:
  """d(sum g * _shifted_sum(x, K)) / dK = sum_{b,h,w} pad(x)[b, h+i, w+j, c] g[b, h, w, c]: (k, k, 1, C).

  Autodiff writes this as k*k full reductions, one pass over x and g each (37 ms for (64, 16, 16, 16)
  on XLA:CPU). Here the columns are cut into tiles of T = `KERNEL_GRAD_TILE`; per kernel row i one
  matmul over (tile, b, h) gives m[v, w, c] = sum pad(x)[., h+i, v, c] g[., h, w, c] for the T+k-1
  input columns v against the T output columns w of a tile, and gK[i, j] = sum_w m[w+j, w], a
  strided slice of m flattened. k matmuls of (T+k-1)/k times the useful work, but no k*k passes
  over memory (7.6 ms for the shape above).
  """
  b, h, w, c = x.shape
  t = min(w, KERNEL_GRAD_TILE)
  n = -(-w // t)
  g = jnp.pad(g, ((0, 0), (0, 0), (0, n * t - w), (0, 0)))  # (B, H, nT, C); zero columns add nothing
  xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2 + n * t - w), (0, 0)))  # (B, H+k-1, nT+k-1, C)
  x_tiles = jnp.stack([xp[:, :, s * t:s * t + t + k - 1] for s in range(n)])  # (n, B, H+k-1, T+k-1, C)
  g_tiles = g.reshape(b, h, n, t, c).transpose(2, 0, 1, 3, 4)  # (n, B, H, T, C)
  rows = []
  for i in range(k):
    m = jnp.einsum('nbhvc,nbhwc->vwc', x_tiles[:, :, i:i + h], g_tiles)  # (T+k-1, T, C)
    flat = m.reshape((t + k - 1) * t, c)  # entry (v, w) at v*T + w; (w+j, w) at w*(T+1) + j*T
    rows.append(jnp.stack([flat[j * t:j * t + (t - 1) * (t + 1) + 1:t + 1].sum(0) for j in range(k)]))
  return jnp.stack(rows)[:, :, None, :]  # (k, k, 1, C)


@jax.custom_vjp
def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The same conv as k*k shifted multiply-adds of the zero-padded input (one fused loop on CPU).

  Odd k. Its VJP is written out: the input gradient is the same shifted sum of the output gradient
  with the kernel flipped, the kernel gradient `_shifted_kernel_grad` (autodiff's k*k slices of
  pads and k*k reductions made the backward 10x the forward on XLA:CPU). Reverse mode only: a
  custom VJP has no forward-mode derivative (`jax.jvp` raises).
  """
  return _shifted_sum(x, kernel)


def _depthwise_conv_shifted_fwd(x, kernel):
  return _shifted_sum(x, kernel), (x, kernel)


def _depthwise_conv_shifted_bwd(res, g):
  x, kernel = res
  gx = _shifted_sum(g, kernel[::-1, ::-1])  # (B, H, W, C)
  gk = _shifted_kernel_grad(x.astype(g.dtype), g, kernel.shape[0])  # (k, k, 1, C)
  return gx.astype(x.dtype), gk.astype(kernel.dtype)


depthwise_conv_shifted.defvjp(_depthwise_conv_shifted_fwd, _depthwise_conv_shifted_bwd)


def depthwise_conv(x: jax.Array, kernel: jax.Array, impl: str = 'auto') -> jax.Array:
  """Depthwise conv by `impl` ('auto' | 'conv' | 'shifted', see the module docstring)."""
  if impl == 'conv':
    return depthwise_conv_grouped(x, kernel)
  if impl == 'shifted':
    return depthwise_conv_shifted(x, kernel)
  if impl == 'auto':
    return jax.lax.platform_dependent(x, kernel, cpu=depthwise_conv_shifted,
                                      default=depthwise_conv_grouped)
  raise ValueError(f'dwconv: expected one of {DWCONV_IMPLS}, got {impl!r}.')


class DepthwiseConv(nn.Module):
  """k x k depthwise conv with bias; params `kernel` (k, k, 1, C) and `bias` (C,) as `nn.Conv`'s."""
  features: int
  kernel_size: int = 7
  impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.impl not in DWCONV_IMPLS:
      raise ValueError(f'dwconv: expected one of {DWCONV_IMPLS}, got {self.impl!r}.')
    k = self.kernel_size
    kernel = self.param('kernel', nn.linear.default_kernel_init, (k, k, 1, self.features),
                        jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return depthwise_conv(x, kernel, self.impl) + bias  # (B, H, W, C)


def _layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


class ConvNeXtBlock(nn.Module):
  """dwconv7x7 -> LayerNorm -> Linear 4C -> exact GELU -> Linear C -> gamma -> + residual."""
  width: int
  dtype: Any = jnp.float32
  dwconv: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.width
    y = DepthwiseConv(c, 7, self.dwconv, dtype=self.dtype, name='conv_dw')(x)  # (B, h, w, C)
    y = _layer_norm('norm', self.dtype)(y)
    y = nn.Dense(4 * c, dtype=self.dtype, name='fc1')(y)  # (B, h, w, 4C)
    y = nn.gelu(y, approximate=False)
    y = nn.Dense(c, dtype=self.dtype, name='fc2')(y)  # (B, h, w, C)
    gamma = self.param('gamma', nn.initializers.constant(1e-6), (c,), jnp.float32)
    return x + y * gamma.astype(y.dtype)


class ConvNeXtStage(nn.Module):
  """Optional LayerNorm + conv2x2/s2 downsampling, then `depth` ConvNeXt blocks."""
  width: int
  depth: int
  downsample: bool
  dtype: Any = jnp.float32
  dwconv: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.downsample:
      x = _layer_norm('downsample_norm', self.dtype)(x)
      x = nn.Conv(self.width, (2, 2), strides=2, padding='VALID', dtype=self.dtype,
                  name='downsample_conv')(x)  # (B, h/2, w/2, C)
    for j in range(self.depth):
      x = ConvNeXtBlock(self.width, dtype=self.dtype, dwconv=self.dwconv, name=f'block{j}')(x)
    return x


class ConvNeXtTrunk(nn.Module):
  """Patch stem (conv4x4/s4 + LayerNorm) and 4 stages; returns res2..res5 (strides 4..32)."""
  widths: tuple[int, ...]
  depths: tuple[int, ...]
  dtype: Any = jnp.float32
  dwconv: str = 'auto'

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    x = nn.Conv(self.widths[0], (4, 4), strides=4, padding='VALID', dtype=self.dtype,
                name='stem_conv')(images.astype(self.dtype))  # (B, H/4, W/4, C2)
    x = _layer_norm('stem_norm', self.dtype)(x)
    feats = {}
    for i, (width, depth) in enumerate(zip(self.widths, self.depths)):
      x = ConvNeXtStage(width, depth, downsample=i > 0, dtype=self.dtype, dwconv=self.dwconv,
                        name=f'stage{i}')(x)
      feats[f'res{i + 2}'] = x  # (B, H/2^(i+2), W/2^(i+2), C_i)
    return feats


class ProjectionMLP(nn.Module):
  """open_clip's 'mlp' projection (timm Mlp): Linear C->2D (bias) -> GELU -> Linear 2D->D (no bias)."""
  hidden: int
  out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Dense(self.hidden, dtype=self.dtype, name='fc1')(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(self.out, use_bias=False, dtype=self.dtype, name='fc2')(x)


class CLIPVisual(nn.Module):
  """ConvNeXt-CLIP image tower.

  Attributes:
    variant: a key of `ovsnet_jax.models.clip.CLIP_VARIANTS` with an image tower.
    dtype: compute dtype (params stay float32).
    dwconv: depthwise-conv formulation, 'auto' | 'conv' | 'shifted' (module docstring).
  """
  variant: str
  dtype: Any = jnp.float32
  dwconv: str = 'auto'

  def setup(self):
    v = clip.get_variant(self.variant)
    if not v.has_visual:
      raise ValueError(f'CLIP variant {self.variant!r} has no image tower.')
    self.trunk = ConvNeXtTrunk(v.widths, v.depths, dtype=self.dtype, dwconv=self.dwconv)
    self.head_norm = _layer_norm('head_norm', self.dtype)
    if v.head == 'linear':
      self.proj = nn.Dense(v.embed_dim, use_bias=False, dtype=self.dtype)
    elif v.head == 'mlp':
      self.mlp = ProjectionMLP(2 * v.embed_dim, v.embed_dim, dtype=self.dtype)
    else:
      raise ValueError(f'CLIP variant {self.variant!r}: head must be linear|mlp, got {v.head!r}.')
    self.head_type = v.head
    self.out_width = v.widths[-1]

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """(B, H, W, 3) CLIP-normalised images -> {'res2'..'res5'}: (B, H/s, W/s, C_s), s = 4..32."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'CLIPVisual expects images (B, H, W, 3), got shape {images.shape}.')
    feats = self.trunk(images)
    if self.is_initializing():  # Create the head params too, so __call__ alone gives the full tree.
      self.head(jnp.zeros((1, self.out_width), jnp.float32))
    return feats

  def head(self, pooled: jax.Array) -> jax.Array:
    """(..., C5) pooled raw res5 features -> (..., D): head LayerNorm then projection."""
    x = self.head_norm(pooled)
    if self.head_type == 'linear':
      return self.proj(x)
    return self.mlp(x)

  def embed_image(self, images: jax.Array) -> jax.Array:
    """(B, H, W, 3) -> (B, D): global average pool of res5, then `head`."""
    res5 = self(images)['res5']  # (B, h, w, C5)
    pooled = jnp.mean(res5.astype(jnp.float32), axis=(1, 2))  # (B, C5)
    return self.head(pooled)
