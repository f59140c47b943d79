"""Learned fusions of F_Q and F_C: the self-/cross-attention baselines of OVSNet Table 4(a).

The paper only says that GFA is compared with "typical learning-based feature fusion approaches"
(self-attention and cross-attention between the query embeddings and the CLIP features). Our
choices, made to be the learned counterpart of GFA (which outputs an updated F_C):

* Both inputs are L2-normalised (as GFA's) and the output replaces F_C^inf: it is the embedding
  that is classified.
* ``self_attn``: the 2Q tokens [F_Q; F_C] (plus a learned type embedding per set) go through one
  pre-norm transformer layer (multi-head self-attention, then an MLP); the F_C half is returned.
* ``cross_attn``: the F_C tokens attend to the F_Q tokens (queries from F_C, keys/values from
  F_Q), then an MLP; pre-norm residual on F_C.
* The output projections of attention and MLP are zero-initialised, so both start as the identity
  on F_C (classification by the pooled CLIP feature) and learn how much of F_Q to mix in.
* ``num_layers`` such layers (``model.attn_fusion``), width D, ``num_heads`` heads, MLP ratio
  ``mlp_ratio``, GELU; one set of weights shared by every deep-supervision prediction.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovsnet_jax.models import layers

FUSIONS = ('self_attn', 'cross_attn')


_l2n = layers.l2_normalize


class FusionLayer(nn.Module):
  """One pre-norm attention + MLP layer on ``x`` attending to ``context`` (or to itself)."""
  num_heads: int
  mlp_ratio: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None) -> jax.Array:
    """x (B, N, D), context (B, M, D) or None (self-attention) -> (B, N, D) float32."""
    d = x.shape[-1]
    h = layers.LayerNorm(name='norm_x')(x)
    kv = h if context is None else layers.LayerNorm(name='norm_context')(context)
    attn = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, out_kernel_init=nn.initializers.zeros,
        name='attention')(h, kv)  # (B, N, D)
    x = x + attn.astype(jnp.float32)
    h = layers.LayerNorm(name='norm_mlp')(x)
    h = nn.Dense(self.mlp_ratio * d, dtype=self.dtype, name='fc1')(h)
    h = nn.Dense(d, dtype=self.dtype, kernel_init=nn.initializers.zeros, name='fc2')(nn.gelu(h))
    return x + h.astype(jnp.float32)


class AttentionFusion(nn.Module):
  """Learned fusion of query embeddings and pooled CLIP features (Table 4a baselines).

  Attributes:
    kind: 'self_attn' or 'cross_attn'.
    num_heads: attention heads (D must be divisible by it).
    mlp_ratio: MLP hidden width / D.
    num_layers: stacked fusion layers.
    dtype: compute dtype.
  """
  kind: str
  num_heads: int = 8
  mlp_ratio: int = 2
  num_layers: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f_q: jax.Array, f_c: jax.Array) -> jax.Array:
    """f_q, f_c (B, Q, D) -> fused (B, Q, D) float32 (what is classified)."""
    if self.kind not in FUSIONS:
      raise ValueError(f'model.fusion: expected one of {FUSIONS} for AttentionFusion, got {self.kind!r}')
    if f_q.shape != f_c.shape:
      raise ValueError(f'AttentionFusion: f_q and f_c must have one shape (B, Q, D), got {f_q.shape}, {f_c.shape}')
    d, q = f_q.shape[-1], f_q.shape[-2]
    if d % self.num_heads:
      raise ValueError(f'model.attn_fusion.num_heads: {self.num_heads} does not divide D={d}')
    f_q, f_c = _l2n(f_q.astype(jnp.float32)), _l2n(f_c.astype(jnp.float32))
    if self.kind == 'self_attn':
      types = self.param('type_embedding', nn.initializers.normal(0.02), (2, d))
      x = jnp.concatenate([f_q + types[0], f_c + types[1]], axis=-2)  # (B, 2Q, D)
      for i in range(self.num_layers):
        x = FusionLayer(self.num_heads, self.mlp_ratio, self.dtype, name=f'layers_{i}')(x, None)
      return x[..., q:, :] - types[1]  # (B, Q, D): the F_C half
    x = f_c
    for i in range(self.num_layers):
      x = FusionLayer(self.num_heads, self.mlp_ratio, self.dtype, name=f'layers_{i}')(x, f_q)
    return x
