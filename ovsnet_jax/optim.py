"""The optimizer: AdamW on the trainable parameters, nothing on the frozen CLIP.

Recipe (Mask2Former / FC-CLIP, OVSNet paper Section 5.2): AdamW, base lr 1e-4, weight decay
0.05 but none on normalisation parameters, embeddings and biases; detectron2's WarmupPolyLR
(linear warmup from ``warmup_factor * lr``, then ``(1 - step / num_steps) ** power``); global-norm
gradient clipping at 0.01 over the trainable parameters.

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
# Path regexes of embedding tables (Mask2Former's `WEIGHT_DECAY_EMBED = 0`): learnable query
# features and positions, level embeddings, the void class embedding, any `nn.Embed` table.
NO_DECAY_PATTERNS = (r'query_feat', r'query_embed', r'query_pos', r'level_embed', r'void_embedding',
                     r'(^|/)embedding$')

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


def param_label(path: str, x: Any, frozen_keys: Sequence[str] = FROZEN_KEYS,
                no_decay_patterns: Sequence[str] = NO_DECAY_PATTERNS) -> str:
  """The optimizer group of one parameter, decided by its path and shape.

  Args:
    path: 'a/b/c' path of the parameter in the param tree.
    x: the parameter (anything with `.ndim`).
    frozen_keys: top-level keys whose subtrees are frozen.
    no_decay_patterns: regexes; a match anywhere in the path means no weight decay.

  Returns:
    'frozen' (no update, no state), 'no_decay' (biases, norm scales/offsets, scalars, i.e. ndim
    <= 1, and embedding tables) or 'decay' (kernels).
  """
  if path.split('/')[0] in frozen_keys:
    return FROZEN
  if len(np.shape(x)) <= 1 or any(re.search(p, path) for p in no_decay_patterns):
    return NO_DECAY
  return DECAY


def param_labels(params: Any) -> Any:
  """`param_label` for every leaf of `params` (same tree structure)."""
  return jax.tree_util.tree_map_with_path(lambda p, x: param_label(path_to_str(p), x), params)


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


def _decay_mask(params: Any) -> Any:
  """True where weight decay applies; keeps optax's MaskedNode placeholders untouched."""
  return jax.tree_util.tree_map_with_path(lambda p, x: param_label(path_to_str(p), x) == DECAY, params)


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW + clipping on the trainable params, `set_to_zero` on the frozen CLIP.

  Args:
    cfg: the `train` config (lr schedule fields, weight_decay, grad_clip).

  Returns:
    An optax transformation for the full OVSNet param tree. Its state holds Adam moments only
    for the trainable leaves.
  """
  if cfg.grad_clip is not None and float(cfg.grad_clip) < 0:
    raise ValueError(f'config.train.grad_clip must be >= 0 (0 = off), got {cfg.grad_clip}')
  parts = []
  if cfg.grad_clip:
    parts.append(optax.clip_by_global_norm(float(cfg.grad_clip)))
  parts.append(optax.adamw(learning_rate_schedule(cfg), b1=0.9, b2=0.999, eps=1e-8,
                           weight_decay=float(cfg.weight_decay), mask=_decay_mask))
  trainable = optax.chain(*parts)
  labels = lambda params: jax.tree.map(lambda l: FROZEN if l == FROZEN else 'trainable', param_labels(params))
  return optax.multi_transform({'trainable': trainable, FROZEN: optax.set_to_zero()}, labels)
