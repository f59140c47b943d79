"""The full OVSNet training objective: set criterion (all L+1 layers) + Proxy Calibration."""
import jax
import jax.numpy as jnp

from ovsnet_jax.losses import criterion
from ovsnet_jax.losses import proxy_calibration as pc


def _embeddings(out, pc_cfg):
  """The (L+1, B, Q, D) arrays PC mixes as F_Q and F_C (`query_source`, `clip_source`)."""
  picked = []
  for field in ('query_source', 'clip_source'):
    name = pc_cfg[field]
    if name not in pc.SOURCES or name not in out:
      raise ValueError(f"proxy_calibration.{field}={name!r}: expected one of {pc.SOURCES} present "
                       f"in the model outputs (have {sorted(out)}).")
    picked.append(out[name])
  return picked


def _pc_layer(out, layer, targets, class_text, indices, rng, pc_cfg):
  """Proxy Calibration on prediction `layer` with that layer's matching."""
  query_embeds, clip_embeds = _embeddings(out, pc_cfg)
  f_q, f_c, f_t, weights = pc.gather_matched_triplets(
      query_embeds[layer], clip_embeds[layer], class_text, targets['classes'],
      indices[layer], targets['valid'])
  return pc.proxy_calibration_loss(f_q, f_c, f_t, rng, pc_cfg.gamma, weights=weights,
                                   alpha_per_pair=pc_cfg.alpha_per_pair)


def proxy_calibration_terms(out, targets, text, indices, rng, pc_cfg):
  """Unweighted PC loss summed over the chosen layers, and its metrics.

  Args:
    out: model outputs with the (L+1, B, Q, D) embeddings named by `pc_cfg.query_source` and
      `pc_cfg.clip_source`.
    targets: `classes` (B, M), `valid` (B, M).
    text: TextClassifier dict {'embeds': (K, S, D), 'valid': (K, S)}.
    indices: (L+1, B, M) matching of every layer.
    rng: PRNG key.
    pc_cfg: `gamma`, `synonyms`, `alpha_per_pair`, `all_layers`, `query_source`, `clip_source`.

  Returns:
    (loss, metrics); with `all_layers` the metrics also hold `loss_pc_{l}` per layer.
  """
  class_text = pc.class_text_embeddings(text, pc_cfg.synonyms)  # (K, D)
  num_layers = indices.shape[0]
  if not pc_cfg.all_layers:
    return _pc_layer(out, num_layers - 1, targets, class_text, indices, rng, pc_cfg)
  metrics = {'loss_pc_q': 0.0, 'loss_pc_c': 0.0, 'loss_pc': 0.0}
  for layer, key in enumerate(jax.random.split(rng, num_layers)):
    _, layer_metrics = _pc_layer(out, layer, targets, class_text, indices, key, pc_cfg)
    for name, value in layer_metrics.items():
      metrics[name] = metrics[name] + value
    metrics[f'loss_pc_{layer}'] = layer_metrics['loss_pc']
  return metrics['loss_pc'], metrics


def total_loss(out, batch, text, rng, cfg, axis_name=None):
  """Segmentation criterion over all L+1 predictions plus weighted Proxy Calibration.

  Args:
    out: model outputs: `pred_logits` (L+1, B, Q, K+1), `pred_masks` (L+1, B, Q, h, w),
      and the (L+1, B, Q, D) embeddings PC uses (`fused_query`, `fused_clip` by default).
    batch: training batch with `masks` bool (B, M, H, W), `classes` int32 (B, M), `valid` (B, M).
    text: TextClassifier dict {'embeds': (K, S, D), 'valid': (K, S)}.
    rng: PRNG key of the step.
    cfg: the `train` config section.
    axis_name: optional pmap/shard_map axis (see `criterion`); None under jit on global arrays.

  Returns:
    (loss, metrics): every term per layer and in total (see `criterion.criterion_from_indices`),
    `loss_pc_q`, `loss_pc_c`, `loss_pc` (unweighted, zeros when PC is disabled) and `loss`.
  """
  for name in ('masks', 'classes', 'valid'):
    if name not in batch:
      raise ValueError(f"total_loss: batch has no '{name}' (expected masks (B, M, H, W), "
                       f"classes (B, M), valid (B, M)); it has {sorted(batch)}.")
  targets = {name: batch[name] for name in ('masks', 'classes', 'valid')}
  match_rng, point_rng, pc_rng = jax.random.split(rng, 3)
  indices = criterion.match_all_layers(out, targets, match_rng, cfg)  # (L+1, B, M)
  loss, metrics = criterion.criterion_from_indices(out, targets, indices, point_rng, cfg,
                                                   axis_name)
  pc_cfg = cfg.proxy_calibration
  if pc_cfg.enabled:
    pc_loss, pc_metrics = proxy_calibration_terms(out, targets, text, indices, pc_rng, pc_cfg)
    loss = loss + pc_cfg.weight * pc_loss
    metrics.update(pc_metrics)
  else:
    metrics.update({name: jnp.zeros((), jnp.float32)
                    for name in ('loss_pc_q', 'loss_pc_c', 'loss_pc')})
  metrics['loss'] = loss
  return loss, metrics
