"""FC-CLIP / Mask2Former ``MSDeformAttnPixelDecoder``: deformable encoder on res3-res5 + FPN with res2.

res5, res4, res3 are projected to ``conv_dim`` (1x1 conv + GroupNorm), flattened, concatenated
(low to high resolution) and refined by ``num_layers`` deformable self-attention encoder layers
(post-norm; queries = features + sine position embedding + level embedding; reference points at
the pixel centres). The stride-8 output is upsampled (bilinear), added to a lateral 1x1 conv + GN of
res2, and fused by a 3x3 conv + GN + ReLU; a 1x1 conv of that stride-4 map is ``mask_features``.
With Mask2Former's strides (encoder min stride 8, common stride 4) exactly one FPN level (res2)
exists, so it is built directly. Runs in float32 whatever the model's compute dtype (Mask2Former
runs it under ``autocast(enabled=False)``).
"""
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ovsnet_jax.models import layer_scan
from ovsnet_jax.models.layers import (ConvNorm, LayerNorm, c2_xavier_fill, embedding_init, resize_bilinear,
                                      sine_position_embedding, xavier_uniform)
from ovsnet_jax.models.ms_deform_attn import MSDeformAttn

ENCODER_FEATURES = ('res5', 'res4', 'res3')  # low to high resolution, strides 32, 16, 8


def reference_points(spatial_shapes: tuple[tuple[int, int], ...]) -> jax.Array:
  """Pixel centres of every level, normalised to [0, 1] as (x, y) (no padding: valid ratio 1).

  Returns:
    (S, 2) float32, levels flattened row-major and concatenated.
  """
  points = []
  for h, w in spatial_shapes:
    y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
    x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
    yy, xx = jnp.meshgrid(y, x, indexing='ij')  # (h, w)
    points.append(jnp.stack([xx.reshape(-1), yy.reshape(-1)], -1))
  return jnp.concatenate(points, 0)


class DeformEncoderLayer(nn.Module):
  """Deformable self-attention -> add & LayerNorm -> FFN (ReLU) -> add & LayerNorm."""
  d_model: int
  num_heads: int
  num_levels: int
  num_points: int
  ffn_dim: int
  impl: str = 'window'
  query_chunk: int = 0
  remat: bool = False

  @nn.compact
  def __call__(self, src: jax.Array, pos: jax.Array, ref: jax.Array,
               spatial_shapes: tuple[tuple[int, int], ...]) -> jax.Array:
    """src (B, S, C), pos (1, S, C), ref (1, S, L, 2) -> (B, S, C)."""
    attn = MSDeformAttn(self.d_model, self.num_levels, self.num_heads, self.num_points, impl=self.impl,
                        query_chunk=self.query_chunk, remat=self.remat, name='self_attn')(
                            src + pos, ref, src, spatial_shapes)
    src = LayerNorm(name='norm1')(src + attn)
    ffn = nn.relu(nn.Dense(self.ffn_dim, kernel_init=xavier_uniform, name='linear1')(src))
    ffn = nn.Dense(self.d_model, kernel_init=xavier_uniform, name='linear2')(ffn)
    return LayerNorm(name='norm2')(src + ffn)


class MSDeformAttnPixelDecoder(nn.Module):
  """Multi-scale deformable-attention pixel decoder (float32).

  Attributes:
    conv_dim: width of the encoder and FPN (256).
    mask_dim: width of ``mask_features`` (256).
    num_layers: deformable encoder layers (6).
    num_heads: deformable attention heads (8).
    num_points: sampling points per head and level (4).
    ffn_dim: encoder FFN width (1024).
    num_groups: GroupNorm groups (32).
    deform_impl: ``ms_deform_attn.DEFORM_IMPLS`` entry.
    deform_query_chunk: queries sampled at a time in the deformable attention (0 = all).
    remat_deform: recompute the deformable sampling in the backward pass (``MSDeformAttn.remat``).
    scan_layers: apply the encoder layers with ``lax.scan`` over their stacked params (one compiled
      layer; same params and outputs as unrolled, see ``layer_scan``).
    remat_layers: with ``scan_layers``, recompute each encoder layer in the backward pass: the scan
      saves one (B, S, C) input per layer instead of every layer's attention and FFN intermediates.
  """
  conv_dim: int = 256
  mask_dim: int = 256
  num_layers: int = 6
  num_heads: int = 8
  num_points: int = 4
  ffn_dim: int = 1024
  num_groups: int = 32
  deform_impl: str = 'window'
  deform_query_chunk: int = 0
  remat_deform: bool = False
  scan_layers: bool = True
  remat_layers: bool = False

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict, **kwargs) -> 'MSDeformAttnPixelDecoder':
    """Builds the module from ``config.model.pixel_decoder``."""
    return cls(conv_dim=cfg.conv_dim, mask_dim=cfg.mask_dim, num_layers=cfg.num_layers,
               num_heads=cfg.num_heads, num_points=cfg.num_points, ffn_dim=cfg.ffn_dim,
               num_groups=cfg.num_groups, deform_impl=cfg.deform_impl,
               deform_query_chunk=cfg.get('deform_query_chunk', 0), remat_deform=cfg.get('remat_deform', False),
               scan_layers=cfg.get('scan_layers', True), remat_layers=cfg.get('remat_layers', False), **kwargs)

  @nn.compact
  def __call__(self, feats: Mapping[str, jax.Array]) -> tuple[jax.Array, list[jax.Array]]:
    """Decodes backbone features.

    Args:
      feats: {'res2', 'res3', 'res4', 'res5'}: (B, h_s, w_s, C_s) NHWC at strides 4, 8, 16, 32.

    Returns:
      mask_features (B, h_4, w_4, mask_dim) and the encoder outputs
      [(B, h_32, w_32, conv_dim), (B, h_16, w_16, conv_dim), (B, h_8, w_8, conv_dim)], float32.
    """
    for key in ('res2',) + ENCODER_FEATURES:
      if key not in feats:
        raise ValueError(f'MSDeformAttnPixelDecoder: feats is missing {key!r} (got keys {sorted(feats)})')
      if feats[key].ndim != 4:
        raise ValueError(f'MSDeformAttnPixelDecoder: feats[{key!r}] must be (B, h, w, C), got shape '
                         f'{feats[key].shape}')
    c, num_levels = self.conv_dim, len(ENCODER_FEATURES)
    level_embed = self.param('level_embed', embedding_init, (num_levels, c))  # (L, C)
    srcs, pos = [], []
    for i, key in enumerate(ENCODER_FEATURES):
      x = ConvNorm(c, 1, use_bias=True, num_groups=self.num_groups, kernel_init=xavier_uniform,
                   name=f'input_proj_{i}')(feats[key].astype(jnp.float32))  # (B, h, w, C)
      srcs.append(x)
      h, w = x.shape[1:3]
      pos.append(sine_position_embedding(h, w, c // 2).reshape(h * w, c) + level_embed[i])
    shapes = tuple(x.shape[1:3] for x in srcs)
    b = srcs[0].shape[0]
    src = jnp.concatenate([x.reshape(b, -1, c) for x in srcs], 1)  # (B, S, C)
    pos = jnp.concatenate(pos, 0)[None]  # (1, S, C)
    ref = jnp.broadcast_to(reference_points(shapes)[None, :, None, :], (1, src.shape[1], num_levels, 2))
    names = [f'encoder_layers_{j}' for j in range(self.num_layers)]
    layer = lambda name, **kw: DeformEncoderLayer(c, self.num_heads, num_levels, self.num_points, self.ffn_dim,
                                                  impl=self.deform_impl, query_chunk=self.deform_query_chunk,
                                                  remat=self.remat_deform, name=name, **kw)
    if self.scan_layers and self.num_layers > 1 and not self.is_initializing():
      stacked = layer_scan.stack(self.variables['params'], names)
      src = layer_scan.scan(layer(None, parent=None), stacked, src, pos, ref, shapes, remat=self.remat_layers)
    else:
      for name in names:
        src = layer(name)(src, pos, ref, shapes)
    outs, start = [], 0
    for h, w in shapes:
      outs.append(src[:, start:start + h * w].reshape(b, h, w, c))  # (B, h, w, C)
      start += h * w

    res2 = feats['res2'].astype(jnp.float32)
    lateral = ConvNorm(c, 1, use_bias=False, num_groups=self.num_groups, name='adapter_1')(res2)
    y = lateral + resize_bilinear(outs[-1], lateral.shape[1:3])  # (B, h_4, w_4, C)
    y = ConvNorm(c, 3, use_bias=False, num_groups=self.num_groups, relu=True, name='layer_1')(y)
    mask_features = nn.Conv(self.mask_dim, (1, 1), kernel_init=c2_xavier_fill, name='mask_features')(y)
    return mask_features, outs
