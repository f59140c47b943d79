"""The CLIP text tower, as open_clip's `CLIP.encode_text` computes it.

token + positional embedding -> pre-LN residual attention blocks (causal mask) -> ln_final ->
the features at the EOT token (the largest token id of each prompt) -> @ text_projection.
LayerNorms use eps 1e-5 (torch default, open_clip's LayerNorm).

Param tree of `CLIPText`:
  {'token_embedding': {'embedding'}, 'positional_embedding', 'block{i}': {'ln_1', 'attn':
   {'in_proj', 'out_proj'}, 'ln_2', 'c_fc', 'c_proj'}, 'ln_final', 'text_projection'}
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovsnet_jax.models import clip  # Mutual import: only used at call time.

LN_EPS = 1e-5  # torch.nn.LayerNorm default, used by open_clip's text tower.


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's QuickGELU: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


def causal_mask(n: int) -> jax.Array:
  """(n, n) bool, True where query i may attend to key j (j <= i)."""
  return jnp.tril(jnp.ones((n, n), bool))


class CausalSelfAttention(nn.Module):
  """torch.nn.MultiheadAttention (packed in_proj with bias, out_proj) under a causal mask."""
  width: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, t, c = x.shape  # (N, T, C)
    dh = c // self.heads
    qkv = nn.Dense(3 * c, dtype=self.dtype, name='in_proj')(x)  # (N, T, 3C)
    q, k, v = jnp.split(qkv.reshape(n, t, 3, self.heads, dh), 3, axis=2)  # (N, T, 1, M, Dh)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # (N, T, M, Dh)
    logits = jnp.einsum('nqmd,nkmd->nmqk', q * (dh ** -0.5), k,
                        preferred_element_type=jnp.float32)  # (N, M, T, T)
    logits = jnp.where(causal_mask(t), logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum('nmqk,nkmd->nqmd', weights, v).reshape(n, t, c)  # (N, T, C)
    return nn.Dense(c, dtype=self.dtype, name='out_proj')(out)


class ResidualAttentionBlock(nn.Module):
  """x + attn(ln_1(x)); x + c_proj(act(c_fc(ln_2(x))))."""
  width: int
  heads: int
  act: str = 'gelu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ln = lambda name: nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name=name)
    x = x + CausalSelfAttention(self.width, self.heads, dtype=self.dtype, name='attn')(ln('ln_1')(x))
    y = nn.Dense(4 * self.width, dtype=self.dtype, name='c_fc')(ln('ln_2')(x))  # (N, T, 4C)
    y = quick_gelu(y) if self.act == 'quick_gelu' else nn.gelu(y, approximate=False)
    return x + nn.Dense(self.width, dtype=self.dtype, name='c_proj')(y)


class CLIPText(nn.Module):
  """CLIP text encoder: int32 tokens (N, 77) -> (N, D) embeddings, not normalised.

  Attributes:
    variant: a key of `ovsnet_jax.models.clip.CLIP_VARIANTS`.
    dtype: compute dtype (params stay float32).
  """
  variant: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    v = clip.get_variant(self.variant)
    # Fewer than context_length columns are allowed: under the causal mask the EOT features of a
    # prompt that fits do not depend on the columns after it (`clip_pretraining` uses short rows).
    if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= v.context_length:
      raise ValueError(
          f'CLIPText expects tokens (N, {v.context_length}), got shape {tokens.shape}.')
    if v.text_act not in ('gelu', 'quick_gelu'):
      raise ValueError(f'CLIP variant {self.variant!r}: text_act must be gelu|quick_gelu.')
    x = nn.Embed(v.vocab_size, v.text_width, name='token_embedding')(tokens)  # (N, T, C)
    pos = self.param('positional_embedding', nn.initializers.normal(0.01),
                     (v.context_length, v.text_width), jnp.float32)
    x = (x + pos[:tokens.shape[1]]).astype(self.dtype)
    for i in range(v.text_layers):
      x = ResidualAttentionBlock(v.text_width, v.text_heads, v.text_act, dtype=self.dtype,
                                 name=f'block{i}')(x)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name='ln_final')(x)
    eot = jnp.argmax(tokens, axis=-1)  # (N,) the EOT token has the largest id
    x = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]  # (N, C)
    proj = self.param('text_projection', nn.initializers.normal(v.text_width ** -0.5),
                      (v.text_width, v.embed_dim), jnp.float32)
    return jnp.dot(x, proj.astype(self.dtype))  # (N, D)
