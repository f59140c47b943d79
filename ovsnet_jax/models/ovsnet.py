"""OVSNet: frozen ConvNeXt-CLIP + MSDeformAttn pixel decoder + masked-attention decoder + heads + fusion.

  images (B, H, W, 3) RGB 0..255 -> CLIP-normalised -> CLIP trunk {res2..res5} (frozen, stop_gradient)
  -> pixel decoder (float32) -> masked-attention decoder: queries (L+1, B, Q, C), masks (L+1, B, Q, H/4, W/4)
  -> F_Q = QueryEmbeddingHead (trainable), F_C = CLIP head of mask-pooled res5 (frozen)
  -> fusion (``model.fusion``: none | gfa | self_attn | cross_attn) -> cosine with text + void -> logits.

Precision: CLIP trunk and decoder matmuls in ``model.compute_dtype`` (bfloat16 by default); pixel
decoder, mask pooling, heads, GFA (float32 LU solve) and logits in float32.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ovsnet_jax.models import attention_fusion
from ovsnet_jax.models import clip
from ovsnet_jax.models import clip_convnext
from ovsnet_jax.models import gfa
from ovsnet_jax.models import heads
from ovsnet_jax.models import mask_decoder
from ovsnet_jax.models import pixel_decoder
from ovsnet_jax.text import classifier

FUSIONS = ('none', 'gfa', 'self_attn', 'cross_attn')
CLIP_KEYS = {'visual': 'clip_visual', 'logit_scale': 'clip_logit_scale'}


def check_model_config(cfg) -> None:
  """Raises ValueError naming the ``model`` field that is invalid."""
  if cfg.fusion not in FUSIONS:
    raise ValueError(f'model.fusion: expected one of {FUSIONS}, got {cfg.fusion!r}')
  if cfg.compute_dtype not in ('float32', 'bfloat16', 'float16'):
    raise ValueError(f"model.compute_dtype: expected 'float32', 'bfloat16' or 'float16', got {cfg.compute_dtype!r}")
  if cfg.fusion == 'gfa':
    gfa.check_config(cfg.gfa)
  clip.get_variant(cfg.clip_variant)


def fuse(cfg, f_q: jax.Array, f_c: jax.Array, fusion_module: nn.Module | None) -> tuple[jax.Array, dict]:
  """Fused embeddings for (L, B, Q, D) inputs; GFA diagnostics are (L, B[, Q]) arrays.

  With GFA the diagnostics also hold F_C^inf 'fused_clip' and F_Q^inf 'fused_query' (L, B, Q, D).
  """
  if cfg.fusion == 'none':
    return f_q, {}
  l, b, q, d = f_q.shape
  if cfg.fusion == 'gfa':
    fused, diag = gfa.gradient_free_aggregation(f_q.reshape(l * b, q, d), f_c.reshape(l * b, q, d), cfg.gfa)
    diag = {k: v.reshape((l, b) + v.shape[1:]) for k, v in diag.items() if k != 'num_singular'}
    diag['num_singular'] = diag['singular'].sum().astype(jnp.int32)
    return fused.reshape(l, b, q, d), diag
  return fusion_module(f_q.reshape(l * b, q, d), f_c.reshape(l * b, q, d)).reshape(l, b, q, d), {}


class OVSNet(nn.Module):
  """Open-vocabulary segmentation network.

  Attributes:
    config: ``config.model`` (a FrozenConfigDict; see configs/common.py).
  """
  config: Any

  @nn.compact
  def __call__(self, images: jax.Array, text: dict, *, train: bool) -> tuple[jax.Array, dict]:
    """Segments ``images`` against the vocabulary ``text``.

    Args:
      images: (B, H, W, 3) float RGB 0..255, H and W multiples of 32.
      text: TextClassifier dict, 'embeds' (K, S, D) float32 normalised, 'valid' (K, S) bool.
      train: training mode (skips the out-of-vocabulary logits).

    Returns:
      (logits (B, Q, K+1) = out['pred_logits'][-1], out) with out as in docs/CONTRACTS.md:
      'pred_logits' (L+1, B, Q, K+1), 'pred_masks' (L+1, B, Q, H/4, W/4), 'query_embeds' F_Q,
      'clip_embeds' F_C, 'fused_embeds' (classified), 'fused_query', 'fused_clip' (L+1, B, Q, D),
      'out_vocab_logits' (B, Q, K) (eval only), 'gfa' diagnostics of every prediction (fusion 'gfa'
      only), 'logit_scale' (). 'fused_query' / 'fused_clip' are the aggregated embeddings Proxy
      Calibration mixes: GFA's F_Q^inf / F_C^inf; with an attention fusion its output / F_C; without
      fusion (and for predictions not fused, gfa.all_layers False) F_Q / F_C themselves.
    """
    cfg = self.config
    check_model_config(cfg)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] % 32 or images.shape[2] % 32:
      raise ValueError(f'OVSNet: images must be (B, H, W, 3) with H, W multiples of 32, got {images.shape}')
    dtype = jnp.dtype(cfg.compute_dtype)
    variant = clip.get_variant(cfg.clip_variant)
    embed_dim = variant.embed_dim
    if text['embeds'].shape[-1] != embed_dim:
      raise ValueError(f"OVSNet: text['embeds'] must be (K, S, {embed_dim}) for {cfg.clip_variant}, "
                       f"got {text['embeds'].shape}")
    mean = jnp.asarray(cfg.pixel_mean, jnp.float32)
    std = jnp.asarray(cfg.pixel_std, jnp.float32)
    x = ((images.astype(jnp.float32) - mean) / std).astype(dtype)  # (B, H, W, 3)

    clip_visual = clip_convnext.CLIPVisual(cfg.clip_variant, dtype=dtype, name='clip_visual')
    feats = jax.tree.map(jax.lax.stop_gradient, clip_visual(x))  # frozen trunk: {res2..res5}
    mask_features, multi_scale = pixel_decoder.MSDeformAttnPixelDecoder.from_config(
        cfg.pixel_decoder, name='pixel_decoder')(feats)  # (B, H/4, W/4, C), 3 levels
    dec = mask_decoder.MaskedAttentionDecoder.from_config(
        cfg.decoder, mask_dim=cfg.pixel_decoder.mask_dim, dtype=dtype, name='mask_decoder')(
            multi_scale, mask_features)
    queries, pred_masks = dec['queries'], dec['pred_masks']  # (L+1, B, Q, C), (L+1, B, Q, h4, w4)

    pooled = heads.pool_per_layer(mask_features, pred_masks)  # (L+1, B, Q, C)
    f_q = heads.QueryEmbeddingHead(embed_dim, cfg.decoder.hidden_dim, dtype=jnp.float32,
                                   name='class_head')(queries, pooled)  # (L+1, B, Q, D)
    f_c = heads.clip_embeddings(clip_visual, feats['res5'], pred_masks)  # (L+1, B, Q, D)

    fusion_module = None
    if cfg.fusion in attention_fusion.FUSIONS:
      a = cfg.attn_fusion
      fusion_module = attention_fusion.AttentionFusion(cfg.fusion, a.num_heads, a.mlp_ratio, a.num_layers,
                                                       dtype=dtype, name='fusion')
    fused_all = cfg.gfa.all_layers
    fused, diag = fuse(cfg, f_q if fused_all else f_q[-1:], f_c if fused_all else f_c[-1:], fusion_module)
    fused_query = diag.pop('fused_query', fused)  # attention fusions: their output; 'none': F_Q
    fused_clip = diag.pop('fused_clip', f_c[-fused.shape[0]:])
    if not fused_all:  # fuse the last prediction only; the deep-supervision ones classify F_Q
      fused, fused_query, fused_clip = (jnp.concatenate([f[:-1], x], axis=0) for f, x in
                                        ((f_q, fused), (f_q, fused_query), (f_c, fused_clip)))

    logit_scale = self.param('logit_scale', nn.initializers.constant(heads.LOGIT_SCALE_INIT), (), jnp.float32)
    void = self.param('void_embedding', nn.initializers.normal(1.0), (embed_dim,), jnp.float32)
    clip_logit_scale = jax.lax.stop_gradient(
        self.param('clip_logit_scale', nn.initializers.constant(heads.LOGIT_SCALE_INIT), (), jnp.float32))
    pred_logits = heads.classify_with_void(fused, text, logit_scale, void)  # (L+1, B, Q, K+1)
    out = {'pred_logits': pred_logits, 'pred_masks': pred_masks, 'query_embeds': f_q, 'clip_embeds': f_c,
           'fused_embeds': fused, 'fused_query': fused_query, 'fused_clip': fused_clip, 'logit_scale': logit_scale}
    if diag:
      out['gfa'] = diag
    if not train:
      out['out_vocab_logits'] = classifier.synonym_max_logits(f_c[-1], text, clip_logit_scale)  # (B, Q, K)
    return pred_logits[-1], out


def model_config(config) -> ml_collections.FrozenConfigDict:
  """``config.model`` of a full experiment config (or a model config itself), frozen."""
  m = config.model if 'model' in config else config
  check_model_config(m)
  return ml_collections.FrozenConfigDict(m)


def build_model(config) -> OVSNet:
  """The OVSNet module of an experiment config (``configs/*.py``) or of its ``model`` section."""
  return OVSNet(model_config(config))


def dummy_text(embed_dim: int, num_classes: int = 1) -> dict:
  """A (K, 1, D) all-valid text classifier, for init and shape checks."""
  e = jnp.zeros((num_classes, 1, embed_dim), jnp.float32).at[..., 0].set(1.0)
  return {'embeds': e, 'valid': jnp.ones((num_classes, 1), bool)}


def init_params(config, rng: jax.Array, clip_params: dict | None = None, image_size: int = 64) -> dict:
  """Randomly initialised OVSNet params, with converted CLIP params placed when given.

  Args:
    config: experiment config (or its ``model`` section).
    rng: PRNG key.
    clip_params: the CLIP param tree ``{'visual', 'text', 'logit_scale'}`` (e.g. from
      ``load_clip_checkpoint``); ``visual`` -> 'clip_visual', ``logit_scale`` -> 'clip_logit_scale'.
    image_size: dummy image side for init (params do not depend on it; multiple of 32).

  Returns:
    The param tree (jit/eval_shape-compatible).
  """
  model = build_model(config)
  d = clip.get_variant(model.config.clip_variant).embed_dim
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = model.init(rng, images, dummy_text(d), train=False)['params']
  if clip_params is None:
    return params
  params = dict(params)
  for src, dst in CLIP_KEYS.items():
    if src not in clip_params:
      raise ValueError(f'clip_params: missing {src!r}; expected the CLIP tree {{"visual", "text", "logit_scale"}}')
    want = jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype).name), params[dst])
    got = jax.tree.map(lambda x: (tuple(jnp.shape(x)), jnp.dtype(x.dtype).name), clip_params[src])
    if want != got:
      raise ValueError(f'clip_params[{src!r}]: shapes/dtypes do not match CLIP variant '
                       f'{model.config.clip_variant!r} ({len(jax.tree.leaves(want))} leaves expected)')
    params[dst] = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), clip_params[src])
  return params


def param_shapes(config) -> dict:
  """The OVSNet param tree as ShapeDtypeStructs (no compute, no memory)."""
  return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
