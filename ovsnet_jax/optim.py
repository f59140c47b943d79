"""The optimizer: AdamW on the trainable parameters, nothing on the frozen CLIP.

Recipe (Mask2Former / FC-CLIP, OVSNet paper Section 5.2): AdamW, base lr 1e-4, weight decay
0.05; detectron2's WarmupPolyLR (``warmup_factor`` 1.0 in FC-CLIP, i.e. no warmup; else a linear
ramp from ``warmup_factor * lr``), then ``(1 - step / num_steps) ** power``; global-norm gradient
clipping at 0.01 over the trainable parameters.

Weight-decay groups (``train.no_decay``):
- 'fcclip' (default), as FC-CLIP's ``train_net.py`` ``build_optimizer``: weight decay 0
  (``WEIGHT_DECAY_NORM``, ``WEIGHT_DECAY_EMBED``) only for the parameters of normalisation modules
  (LayerNorm / GroupNorm scale and bias) and of ``nn.Embedding`` modules: the decoder's
  ``query_feat``, ``query_embed`` (query positions) and ``level_embed``, FC-CLIP's
  ``void_embedding`` (and the learned fusions' ``type_embedding``). Everything else is decayed:
  every Linear / Conv bias (sampling-offset biases included), the in-vocabulary ``logit_scale`` (an
  ``nn.Parameter``) and the pixel decoder's ``level_embed`` (an ``nn.Parameter``, not an Embedding).
- 'all_1d': no decay for every parameter with ndim <= 1 (biases, scalars, norms) and every
  embedding table including the pixel decoder's ``level_embed`` (this code's previous rule).
FC-CLIP's ``BACKBONE_MULTIPLIER`` (0.1) scales the lr of the CLIP backbone, which is frozen there
(``requires_grad`` False) and here alike, so it changes nothing.

The frozen CLIP image tower (``clip_visual``) and its logit scale (``clip_logit_scale``) are
labelled ``'frozen'`` and go through ``optax.set_to_zero``: they get zero updates and no optimizer
state at all.
"""
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

# Top-level parameter collections of OVSNet that are never trained (docs/CONTRACTS.md).
FROZEN_KEYS = ('clip_visual', 'clip_logit_scale')
# 'all_1d' rule: path regexes of embedding tables (learnable query features and positions, level
# embeddings of both decoders, the void class embedding, any `nn.Embed` table); ndim <= 1 too.
NO_DECAY_PATTERNS = (r'query_feat', r'query_embed', r'query_pos', r'level_embed', r'void_embedding',
                     r'(^|/)embedding$')
# 'fcclip' rule: FC-CLIP's torch.nn.Embedding modules (mask_decoder query_feat / query_embed /
# level_embed are nn.Embedding there; the pixel decoder's level_embed is an nn.Parameter and is
# decayed), the void embedding, the learned fusions' type embedding, any `nn.Embed` table ...
FCCLIP_EMBEDDING_PATTERNS = (r'^mask_decoder/(query_feat|query_embed|level_embed)$', r'^void_embedding$',
                             r'(^|/)type_embedding$', r'(^|/)embedding$')
# ... and the scale / bias of normalisation modules (LayerNorm / GroupNorm: flax names them
# `*norm*` / `*Norm_<i>` here, e.g. norm1, cross_norm, decoder_norm, pool_norm, GroupNorm_0).
FCCLIP_NORM_PATTERN = r'(^|/)[^/]*(norm|Norm)[^/]*/(scale|bias)$'
NO_DECAY_RULES = ('fcclip', 'all_1d')

FROZEN, DECAY, NO_DECAY = 'frozen', 'decay', 'no_decay'


def path_to_str(path: Sequence[Any]) -> str:
  """A `jax.tree_util` key path as 'a/b/c'."""
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def check_no_decay_rule(rule: str) -> None:
  if rule not in NO_DECAY_RULES:
    raise ValueError(f'config.train.no_decay must be one of {NO_DECAY_RULES}, got {rule!r}')


def param_label(path: str, x: Any, rule: str = 'fcclip', frozen_keys: Sequence[str] = FROZEN_KEYS) -> str:
  """The optimizer group of one parameter, decided by its path (and shape for 'all_1d').

  Args:
    path: 'a/b/c' path of the parameter in the param tree.
    x: the parameter (anything with a shape).
    rule: 'fcclip' (norms and embedding tables undecayed) or 'all_1d' (also every ndim <= 1
      parameter and the pixel decoder's level_embed); see the module docstring.
    frozen_keys: top-level keys whose subtrees are frozen.

  Returns:
    'frozen' (no update, no state), 'no_decay' or 'decay'.
  """
  check_no_decay_rule(rule)
  if path.split('/')[0] in frozen_keys:
    return FROZEN
  if rule == 'fcclip':
    undecayed = (re.search(FCCLIP_NORM_PATTERN, path) is not None
                 or any(re.search(p, path) for p in FCCLIP_EMBEDDING_PATTERNS))
  else:
    undecayed = len(np.shape(x)) <= 1 or any(re.search(p, path) for p in NO_DECAY_PATTERNS)
  return NO_DECAY if undecayed else DECAY


def param_labels(params: Any, rule: str = 'fcclip') -> Any:
  """`param_label` for every leaf of `params` (same tree structure)."""
  return jax.tree_util.tree_map_with_path(lambda p, x: param_label(path_to_str(p), x, rule), params)


def learning_rate_schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
  """detectron2's WarmupPolyLR as an optax schedule of the step count.

  lr(s) = lr * w(s) * (1 - s / num_steps) ** poly_power, with the linear warmup factor
  w(s) = warmup_factor + (1 - warmup_factor) * s / warmup_steps for s < warmup_steps, else 1.

  Args:
    cfg: the `train` config (lr, num_steps, warmup_steps, warmup_factor, poly_power).
  """
  lr, num_steps, warmup = float(cfg.lr), int(cfg.num_steps), int(cfg.warmup_steps)
  factor, power = float(cfg.warmup_factor), float(cfg.poly_power)
  if num_steps <= 0:
    raise ValueError(f'config.train.num_steps must be > 0, got {num_steps}')
  if warmup < 0:
    raise ValueError(f'config.train.warmup_steps must be >= 0, got {warmup}')

  def schedule(step):
    s = jnp.asarray(step, jnp.float32)
    alpha = s / max(warmup, 1)
    warm = jnp.where(s < warmup, factor * (1.0 - alpha) + alpha, 1.0)
    poly = jnp.maximum(1.0 - s / num_steps, 0.0) ** power
    return lr * warm * poly

  return schedule


def _decay_mask(rule: str):
  """params -> True where weight decay applies; keeps optax's MaskedNode placeholders untouched."""
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda p, x: param_label(path_to_str(p), x, rule) == DECAY, params)


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW + clipping on the trainable params, `set_to_zero` on the frozen CLIP.

  Args:
    cfg: the `train` config (lr schedule fields, weight_decay, no_decay, grad_clip).

  Returns:
    An optax transformation for the full OVSNet param tree. Its state holds Adam moments only
    for the trainable leaves.
  """
  if cfg.grad_clip is not None and float(cfg.grad_clip) < 0:
    raise ValueError(f'config.train.grad_clip must be >= 0 (0 = off), got {cfg.grad_clip}')
  rule = cfg.get('no_decay', 'fcclip')
  check_no_decay_rule(rule)
  parts = []
  if cfg.grad_clip:
    parts.append(optax.clip_by_global_norm(float(cfg.grad_clip)))
  parts.append(optax.adamw(learning_rate_schedule(cfg), b1=0.9, b2=0.999, eps=1e-8,
                           weight_decay=float(cfg.weight_decay), mask=_decay_mask(rule)))
  trainable = optax.chain(*parts)
  labels = lambda params: jax.tree.map(lambda l: FROZEN if l == FROZEN else 'trainable', param_labels(params, rule))
  return optax.multi_transform({'trainable': trainable, FROZEN: optax.set_to_zero()}, labels)
