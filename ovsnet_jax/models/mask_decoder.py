"""Mask2Former's masked-attention transformer decoder (FC-CLIP's, without the class head).

Learnable query features and query positions go through ``num_layers`` post-norm layers of
masked cross-attention -> self-attention -> FFN. Layer i attends to pixel-decoder level i % 3
(1/32, 1/16, 1/8; keys get the sine position embedding, memory gets a level embedding), restricted
to where the previous prediction's mask, bilinearly resized to that level, has sigmoid >= 0.5
(rows that would block every key are unblocked; the mask is under stop_gradient). Predictions come
from ``decoder_norm`` -> ``mask_embed`` MLP x mask_features, before the first layer and after each.

Matmuls run in ``dtype`` (bf16 capable); softmax, LayerNorm and the residual stream in float32.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ovsnet_jax.models import layer_scan
from ovsnet_jax.models.layers import (MLP, LayerNorm, c2_xavier_fill, embedding_init, sine_position_embedding,
                                      xavier_uniform)

NUM_LEVELS = 3
# torch.nn.MultiheadAttention initialises q, k, v as one (3C, C) xavier_uniform matrix:
# bound sqrt(6 / 4C), i.e. a (C, C) kernel at half xavier's variance.
in_proj_init = nn.initializers.variance_scaling(0.5, 'fan_avg', 'uniform')


class Attention(nn.Module):
  """Multi-head attention, optional boolean mask (True = blocked), float32 softmax."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array,
               blocked: jax.Array | None = None) -> jax.Array:
    """query (B, Q, C), key/value (B, K, C), blocked (B, Q, K) bool -> (B, Q, C)."""
    c = query.shape[-1]
    if c % self.num_heads:
      raise ValueError(f'Attention: width {c} must be divisible by num_heads ({self.num_heads})')
    dh = c // self.num_heads
    proj = lambda name: nn.Dense(c, dtype=self.dtype, kernel_init=in_proj_init, name=name)
    q = proj('q_proj')(query).reshape(*query.shape[:2], self.num_heads, dh)  # (B, Q, M, Dh)
    k = proj('k_proj')(key).reshape(*key.shape[:2], self.num_heads, dh)  # (B, K, M, Dh)
    v = proj('v_proj')(value).reshape(*value.shape[:2], self.num_heads, dh)  # (B, K, M, Dh)
    logits = jnp.einsum('bqmd,bkmd->bmqk', q, k).astype(jnp.float32) * dh ** -0.5  # (B, M, Q, K)
    if blocked is not None:
      logits = jnp.where(blocked[:, None], -jnp.inf, logits)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum('bmqk,bkmd->bqmd', weights, v).reshape(query.shape)  # (B, Q, C)
    return nn.Dense(c, dtype=self.dtype, kernel_init=xavier_uniform, name='out_proj')(out)


class MaskedAttentionLayer(nn.Module):
  """Masked cross-attention -> self-attention -> FFN, each followed by add & LayerNorm."""
  num_heads: int
  ffn_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tgt: jax.Array, query_pos: jax.Array, memory: jax.Array, pos: jax.Array,
               blocked: jax.Array) -> jax.Array:
    """tgt (B, Q, C), query_pos (1, Q, C), memory (B, K, C), pos (1, K, C), blocked (B, Q, K)."""
    attn = lambda name: Attention(self.num_heads, dtype=self.dtype, name=name)
    x = attn('cross_attn')(tgt + query_pos, memory + pos, memory, blocked)
    tgt = LayerNorm(name='cross_norm')(tgt + x)
    qk = tgt + query_pos
    x = attn('self_attn')(qk, qk, tgt)
    tgt = LayerNorm(name='self_norm')(tgt + x)
    c = tgt.shape[-1]
    x = nn.relu(nn.Dense(self.ffn_dim, dtype=self.dtype, kernel_init=xavier_uniform, name='linear1')(tgt))
    x = nn.Dense(c, dtype=self.dtype, kernel_init=xavier_uniform, name='linear2')(x)
    return LayerNorm(name='ffn_norm')(tgt + x)


def attention_block_mask(mask_logits: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Where the next cross-attention is blocked: resized mask with sigmoid < 0.5, no gradient.

  Args:
    mask_logits: (B, Q, H, W).
    size: the memory level's (h, w).

  Returns:
    (B, Q, h*w) bool, True = blocked; rows that would be all blocked are all unblocked.
  """
  b, q = mask_logits.shape[:2]
  logits = jax.lax.stop_gradient(mask_logits).astype(jnp.float32)
  # jax.image.resize without antialiasing = F.interpolate(bilinear, align_corners=False).
  logits = jax.image.resize(logits, (b, q, *size), method='bilinear', antialias=False)
  blocked = (jax.nn.sigmoid(logits) < 0.5).reshape(b, q, -1)
  return jnp.where(blocked.all(-1, keepdims=True), False, blocked)


class MaskedAttentionDecoder(nn.Module):
  """Mask2Former transformer decoder: queries and mask logits after every layer.

  Attributes:
    num_queries: Q.
    hidden_dim: C.
    num_heads: attention heads.
    ffn_dim: FFN width (2048).
    num_layers: L decoder layers (9) -> L + 1 predictions.
    mask_dim: width of mask_features (and of the mask_embed output).
    dtype: compute dtype of the matmuls.
    scan_layers: run the layers as ``lax.scan`` over rounds of NUM_LEVELS layers (one per memory
      level) with stacked params; a remainder of num_layers % NUM_LEVELS layers runs unrolled.
      Same params (``layers_i``) and outputs as unrolled (``layer_scan``).
    remat_layers: with ``scan_layers``, recompute each round in the backward pass: the scan saves
      the round's input queries and masks instead of its attention masks and intermediates.
  """
  num_queries: int = 100
  hidden_dim: int = 256
  num_heads: int = 8
  ffn_dim: int = 2048
  num_layers: int = 9
  mask_dim: int = 256
  dtype: Any = jnp.float32
  scan_layers: bool = True
  remat_layers: bool = False

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict, mask_dim: int, dtype: Any = jnp.float32,
                  **kwargs) -> 'MaskedAttentionDecoder':
    """Builds the module from ``config.model.decoder`` and the pixel decoder's mask_dim."""
    return cls(num_queries=cfg.num_queries, hidden_dim=cfg.hidden_dim, num_heads=cfg.num_heads,
               ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, mask_dim=mask_dim, dtype=dtype,
               scan_layers=cfg.get('scan_layers', True), remat_layers=cfg.get('remat_layers', False), **kwargs)

  @nn.compact
  def __call__(self, multi_scale: Sequence[jax.Array], mask_features: jax.Array) -> dict[str, jax.Array]:
    """Decodes queries from the pixel decoder's outputs.

    Args:
      multi_scale: [(B, h_32, w_32, C_in), (B, h_16, w_16, C_in), (B, h_8, w_8, C_in)].
      mask_features: (B, h_4, w_4, mask_dim).

    Returns:
      {'queries': (L+1, B, Q, C) float32 after decoder_norm,
       'pred_masks': (L+1, B, Q, h_4, w_4) float32 logits}; index 0 is the prediction on the
      learnable queries, -1 the last layer's.
    """
    if len(multi_scale) != NUM_LEVELS:
      raise ValueError(f'MaskedAttentionDecoder: multi_scale must hold {NUM_LEVELS} levels (1/32, 1/16, 1/8), '
                       f'got {len(multi_scale)}')
    if mask_features.ndim != 4 or mask_features.shape[-1] != self.mask_dim:
      raise ValueError(f'MaskedAttentionDecoder: mask_features must be (B, h, w, {self.mask_dim}), got '
                       f'{mask_features.shape}')
    c, b = self.hidden_dim, mask_features.shape[0]
    level_embed = self.param('level_embed', embedding_init, (NUM_LEVELS, c))  # (3, C)
    memories, poses, sizes = [], [], []
    for i, x in enumerate(multi_scale):
      h, w = x.shape[1:3]
      if x.shape[-1] != c:
        x = nn.Conv(c, (1, 1), dtype=self.dtype, kernel_init=c2_xavier_fill, name=f'input_proj_{i}')(x)
      memories.append(x.reshape(b, h * w, c).astype(jnp.float32) + level_embed[i])  # (B, hw, C)
      poses.append(sine_position_embedding(h, w, c // 2).reshape(1, h * w, c))
      sizes.append((h, w))

    query_feat = self.param('query_feat', embedding_init, (self.num_queries, c))
    query_pos = self.param('query_embed', embedding_init, (self.num_queries, c))[None]  # (1, Q, C)
    tgt = jnp.broadcast_to(query_feat[None], (b, self.num_queries, c))  # (B, Q, C)
    decoder_norm = LayerNorm(name='decoder_norm')
    mask_embed = MLP(c, self.mask_dim, 3, dtype=self.dtype, name='mask_embed')
    pixels = mask_features.astype(self.dtype)
    layer = lambda name, **kw: MaskedAttentionLayer(self.num_heads, self.ffn_dim, dtype=self.dtype, name=name, **kw)
    rounds = self.num_layers // NUM_LEVELS if self.scan_layers and not self.is_initializing() else 0

    def predict(tgt, norm=decoder_norm, embed=mask_embed):
      out = norm(tgt)  # (B, Q, C) float32
      masks = jnp.einsum('bqc,bhwc->bqhw', embed(out), pixels).astype(jnp.float32)  # (B, Q, h4, w4)
      return out, masks

    out, masks = predict(tgt)
    queries, pred_masks = [out[None]], [masks[None]]
    if rounds > 1:
      params = self.variables['params']
      stacked = layer_scan.stack(params, [f'layers_{i}' for i in range(rounds * NUM_LEVELS)])
      stacked = jax.tree.map(lambda x: x.reshape((rounds, NUM_LEVELS) + x.shape[1:]), stacked)
      free_layer = layer(None, parent=None)
      norm = lambda x: LayerNorm(parent=None).apply({'params': params['decoder_norm']}, x)
      embed = lambda x: MLP(c, self.mask_dim, 3, dtype=self.dtype, parent=None).apply(
          {'params': params['mask_embed']}, x)

      def one_round(carry, p):  # NUM_LEVELS layers, one per memory level
        tgt, masks = carry
        outs = []
        for level in range(NUM_LEVELS):
          blocked = attention_block_mask(masks, sizes[level])  # (B, Q, hw)
          tgt = free_layer.apply({'params': jax.tree.map(lambda x, level=level: x[level], p)},
                                 tgt, query_pos, memories[level], poses[level], blocked)
          out, masks = predict(tgt, norm, embed)
          outs.append((out, masks))
        return (tgt, masks), jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

      if self.remat_layers:
        one_round = jax.checkpoint(one_round, prevent_cse=False)
      (tgt, masks), (outs, all_masks) = jax.lax.scan(one_round, (tgt, masks), stacked)  # (R, 3, ...)
      queries.append(outs.reshape((-1,) + outs.shape[2:]))
      pred_masks.append(all_masks.reshape((-1,) + all_masks.shape[2:]))
    else:
      rounds = 0
    for i in range(rounds * NUM_LEVELS, self.num_layers):
      level = i % NUM_LEVELS
      blocked = attention_block_mask(masks, sizes[level])  # (B, Q, hw)
      tgt = layer(f'layers_{i}')(tgt, query_pos, memories[level], poses[level], blocked)
      out, masks = predict(tgt)
      queries.append(out[None])
      pred_masks.append(masks[None])
    return {'queries': jnp.concatenate(queries), 'pred_masks': jnp.concatenate(pred_masks)}
