"""OVSNet heads: query embeddings F_Q (in-vocabulary path) and mask-pooled CLIP features F_C.

In-vocabulary (FC-CLIP ``forward_prediction_heads``, trained)::

  pooled = MaskPool(mask_features, pred_masks)        # pixel-decoder features, (B, Q, C)
  F_Q    = MLP3(Linear(LayerNorm(pooled)) + queries)   # (B, Q, D), D = CLIP embed dim

Out-of-vocabulary (FC-CLIP ``visual_prediction_forward_convnext``, frozen)::

  F_C = CLIP.head(MaskPool(res5, pred_masks))          # raw res5 pooled, then LayerNorm + proj

Classification: cosine with the text classifier (max over synonyms) times a learnable
temperature min(exp(logit_scale), 100), plus a learnable L2-normalised void embedding as the last
class.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovsnet_jax.models import layers
from ovsnet_jax.models import mask_pooling
from ovsnet_jax.text import classifier

LOGIT_SCALE_INIT = float(np.log(1 / 0.07))
MAX_LOGIT_SCALE = 100.0


def pool_per_layer(features: jax.Array, pred_masks: jax.Array) -> jax.Array:
  """Mask pooling for every prediction: features (B, h, w, C), pred_masks (L, B, Q, H, W) -> (L, B, Q, C)."""
  return jax.vmap(mask_pooling.mask_pool, in_axes=(None, 0))(features, pred_masks)


class QueryEmbeddingHead(nn.Module):
  """F_Q: decoder queries plus projected mask-pooled pixel features, mapped to CLIP space.

  Attributes:
    embed_dim: D, the CLIP embedding width.
    hidden_dim: C, the decoder width (MLP hidden width).
    dtype: compute dtype (params float32; LayerNorm in float32).
  """
  embed_dim: int
  hidden_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, queries: jax.Array, pooled: jax.Array) -> jax.Array:
    """queries (..., Q, C) after decoder_norm, pooled (..., Q, C_mask) -> F_Q (..., Q, D) float32."""
    p = layers.LayerNorm(name='pool_norm')(pooled.astype(jnp.float32))
    p = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=layers.torch_linear_init,
                 name='pool_proj')(p)  # (..., Q, C)
    x = p.astype(jnp.float32) + queries.astype(jnp.float32)
    return layers.MLP(self.hidden_dim, self.embed_dim, 3, dtype=self.dtype, name='mlp')(x).astype(jnp.float32)


def clip_embeddings(clip_visual: nn.Module, res5: jax.Array, pred_masks: jax.Array) -> jax.Array:
  """F_C for every prediction, with no gradient into CLIP or the masks.

  Args:
    clip_visual: the bound CLIPVisual module (its ``head`` is applied to the pooled features).
    res5: (B, h32, w32, C5) raw CLIP res5 features.
    pred_masks: (L, B, Q, H, W) mask logits.

  Returns:
    (L, B, Q, D) float32.
  """
  pooled = pool_per_layer(jax.lax.stop_gradient(res5), pred_masks)  # (L, B, Q, C5)
  return jax.lax.stop_gradient(clip_visual.head(pooled).astype(jnp.float32))


l2_normalize = layers.l2_normalize


def classify_with_void(embeds: jax.Array, text: dict, logit_scale: jax.Array, void: jax.Array) -> jax.Array:
  """In-vocabulary logits with the void class appended.

  Args:
    embeds: (..., D) visual embeddings (normalised here).
    text: TextClassifier dict, 'embeds' (K, S, D), 'valid' (K, S).
    logit_scale: () log temperature (clamped at exp <= 100).
    void: (D,) void embedding (normalised here).

  Returns:
    (..., K + 1) float32 logits, the last column is void.
  """
  embeds = embeds.astype(jnp.float32)
  logits = classifier.synonym_max_logits(embeds, text, logit_scale)  # (..., K)
  scale = jnp.minimum(jnp.exp(logit_scale), MAX_LOGIT_SCALE)
  void_logit = scale * jnp.einsum('...d,d->...', l2_normalize(embeds), l2_normalize(void.astype(jnp.float32)))
  return jnp.concatenate([logits, void_logit[..., None]], axis=-1)
