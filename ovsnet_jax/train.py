"""Training: the pure train step and the `train_and_evaluate(config, workdir)` loop.

The loop builds the mesh, the text classifier of the training vocabulary, the model and the
input pipeline; resumes from `<workdir>/checkpoints` when a checkpoint is there; jits the step
once with shardings and donation; logs every loss term, the learning rate, `l2_grads`,
`l2_params`, img/s and the ETA (tqdm on the console, TensorBoard files via tensorboardX under
`<workdir>/tensorboard`); checkpoints and evaluates periodically.
"""
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from ovsnet_jax import loading
from ovsnet_jax import losses
from ovsnet_jax import optim
from ovsnet_jax import train_guard
from ovsnet_jax.losses import criterion


class TrainState(struct.PyTreeNode):
  """What a step updates: step counter (int32 ()), the full OVSNet params, optimizer state."""
  step: jax.Array
  params: Any
  opt_state: Any


def create_train_state(params: Any, cfg: ml_collections.ConfigDict) -> TrainState:
  """A step-0 state for `params` with the optimizer of `cfg.train`."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optim.make_optimizer(cfg.train).init(params))


def split_frozen(params: dict) -> tuple[dict, dict]:
  """(trainable, frozen) top-level subtrees of the OVSNet params (`optim.FROZEN_KEYS` frozen)."""
  trainable = {k: v for k, v in params.items() if k not in optim.FROZEN_KEYS}
  frozen = {k: v for k, v in params.items() if k in optim.FROZEN_KEYS}
  return trainable, frozen


def l2_norm(tree: Any) -> jax.Array:
  """Global L2 norm of a pytree, float32 ()."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def loss_and_metrics(params: dict, batch: dict, rng: jax.Array, *, model: nn.Module, text: dict,
                     cfg: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """OVSNet forward on `batch['image']` (B, H, W, 3) then the training criterion (+ GFA diagnostics)."""
  from ovsnet_jax.models import gfa  # pylint: disable=g-import-not-at-top
  model_rng, loss_rng = jax.random.split(rng)
  _, out = model.apply({'params': params}, batch['image'], text, train=True, rngs={'dropout': model_rng})
  loss, metrics = losses.total_loss(out, batch, text, loss_rng, cfg.train)
  return loss, ({**metrics, **gfa.summary_metrics(out['gfa'])} if 'gfa' in out else metrics)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, model: nn.Module, text: dict,
               cfg: ml_collections.ConfigDict) -> tuple[TrainState, dict]:
  """One optimizer step, pure.

  Args:
    state: the current `TrainState`.
    batch: {'image' (B, H, W, 3) float 0..255, 'masks' bool (B, M, H, W), 'classes' int32 (B, M),
      'valid' bool (B, M)}.
    rng: the run's base key; this step uses `fold_in(rng, state.step)`.
    model: the OVSNet module.
    text: the TextClassifier dict of the training vocabulary.
    cfg: the full config (`cfg.train` for losses and optimizer).

  Returns:
    (new state, metrics): every loss term of the criterion, `loss`, `lr`, `l2_grads` (before
    clipping), `l2_params` over the trainable params, with GFA `gfa/*` (`gfa.summary_metrics`), and
    `finite` (bool: loss and `l2_grads` are finite; when not, params and optimizer state come back
    unchanged, only `step` advances).
  """
  rng = jax.random.fold_in(rng, state.step)
  trainable, frozen = split_frozen(state.params)

  def loss_fn(trainable):
    return loss_and_metrics({**trainable, **frozen}, batch, rng, model=model, text=text, cfg=cfg)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
  # The frozen CLIP is not differentiated; `set_to_zero` ignores these values.
  full_grads = {**grads, **jax.tree.map(jnp.zeros_like, frozen)}
  tx = optim.make_optimizer(cfg.train)
  updates, opt_state = tx.update(full_grads, state.opt_state, state.params)
  l2_grads = l2_norm(grads)
  # Divergence guard: a non-finite loss or gradient norm applies no update (no non-finite state
  # can ever be saved); `train_guard` counts such steps on the device.
  finite = jnp.isfinite(loss) & jnp.isfinite(l2_grads)
  keep_if_bad = lambda new, old: jnp.where(finite, new, old)
  params = jax.tree.map(keep_if_bad, optax.apply_updates(state.params, updates), state.params)
  opt_state = jax.tree.map(keep_if_bad, opt_state, state.opt_state)
  metrics = {**metrics, 'loss': loss, 'lr': optim.learning_rate_schedule(cfg.train)(state.step),
             'l2_grads': l2_grads, 'l2_params': l2_norm(split_frozen(params)[0]), 'finite': finite}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_step_fn(model: nn.Module, cfg: ml_collections.ConfigDict):
  """`(state, batch, rng, text) -> (state, metrics)`: text is an argument, not a baked constant."""
  def step(state, batch, rng, text):
    return train_step(state, batch, rng, model=model, text=text, cfg=cfg)
  return step


# ----------------------------------------------------------------------------------------------
# The training loop.

class ConfigError(ValueError):
  """A training config field has a bad value; the message names the field."""


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ConfigError naming the first bad field of the training config."""
  t = config.train
  positive = {'batch_size': t.batch_size, 'num_steps': t.num_steps, 'log_every': t.log_every,
              'checkpoint_every': t.checkpoint_every, 'eval_every': t.eval_every, 'lr': t.lr}
  for name, value in positive.items():
    if not value > 0:
      raise ConfigError(f'config.train.{name} must be > 0, got {value!r}')
  if not 0 <= t.warmup_steps <= t.num_steps:
    raise ConfigError(f'config.train.warmup_steps must be in [0, num_steps={t.num_steps}], got {t.warmup_steps}')
  if t.weight_decay < 0 or t.grad_clip < 0:
    raise ConfigError(f'config.train.weight_decay and grad_clip must be >= 0, got {t.weight_decay}, {t.grad_clip}')
  if t.keep_checkpoints < 0:
    raise ConfigError(f'config.train.keep_checkpoints must be >= 0 (0 = keep all), got {t.keep_checkpoints}')
  if not 0 <= t.stop_at_step <= t.num_steps:
    raise ConfigError(f'config.train.stop_at_step must be in [0, num_steps={t.num_steps}] (0 = num_steps), '
                     f'got {t.stop_at_step}')


def _reader(config: ml_collections.ConfigDict, name: str, split: str, semantic: bool):
  from ovsnet_jax.input import pipeline  # pylint: disable=g-import-not-at-top
  kwargs = dict(config.data.get('shapes', {})) if name == 'shapes' else {}
  return pipeline.make_reader(name, config.data.root, split, semantic=semantic, **kwargs)


# Moved to ovsnet_jax/loading.py (one loading module for every launcher); kept importable here.
load_clip = loading.load_clip
ensure_clip_checkpoint = loading.ensure_clip_checkpoint
text_classifier = loading.text_classifier


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


def _log_scalars(writer, step: int, scalars: dict) -> None:
  if writer is not None:
    for name, value in scalars.items():
      writer.add_scalar(name, float(value), step)
    writer.flush()


RESULTS_NAME = 'results.json'


def write_results(workdir: str, result: dict) -> None:
  """Writes the run's last metrics to `<workdir>/results.json` (atomically; JSON numbers and strings)."""
  from ovsnet_jax import atomic_io  # pylint: disable=g-import-not-at-top
  atomic_io.write_json({'step': int(result['step']), 'train': result['train'], 'eval': result['eval']},
                       os.path.join(workdir, RESULTS_NAME), indent=2,
                       default=lambda o: o.tolist() if hasattr(o, 'tolist') else str(o))


def read_results(workdir: str, step: int) -> dict | None:
  """The results a finished run wrote at `step`, or None."""
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, RESULTS_NAME)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    result = json.load(f)
  return result if result.get('step') == step else None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `<workdir>/checkpoints`), logs, checkpoints and evaluates.

  Returns:
    {'step': last step, 'train': last logged metrics, 'eval': last evaluation results}.
  """
  from ovsnet_jax import checkpointing, evaluate, sharding  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.input import pipeline  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.models import gfa, ovsnet  # pylint: disable=g-import-not-at-top
  import tensorboardX  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top

  check_config(config)
  sharding.initialize_distributed(config.train)
  t, main = config.train, jax.process_index() == 0
  mesh = sharding.make_mesh()
  sharding.check_batch_size(t.batch_size, mesh)
  rep = sharding.replicated(mesh)

  reader = _reader(config, config.data.train, 'train', semantic=False)
  train_ds = pipeline.train_dataset_from_config(reader, config)  # every config.data field
  data_iter = iter(train_ds)
  _, clip_params = load_clip(config)
  classify = text_classifier(config, clip_params, loading.text_cache_dir(config))
  text = jax.device_put(classify(evaluate.dataset_vocabulary(config, config.data.train, reader)[0]), rep)

  model = ovsnet.build_model(config)
  init_rng, rng = jax.random.split(jax.random.PRNGKey(config.seed))
  # A global (replicated) array built from host data: with several processes orbax saves only global
  # jax.Arrays (a host-local key made every multi-host save fail: "Cannot serialize host local
  # jax.Array"), and device_put of a device-committed local array onto a multi-process sharding
  # gives an array orbax cannot read either ("input arrays must have one shard each").
  rng = jax.device_put(np.asarray(rng), rep)
  init_fn = lambda key, clip: create_train_state(ovsnet.init_params(config, key, clip), config)
  abstract = jax.eval_shape(init_fn, init_rng, clip_params)
  state_sh = sharding.state_shardings(abstract, mesh, t.shard_optimizer_state)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), every=t.checkpoint_every,
                                    keep=t.keep_checkpoints, async_save=t.async_checkpointing)
  with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  restored = ckpt.restore(jax.tree.map(with_sharding, abstract, state_sh), with_sharding(rng, rep))
  if restored is None:
    state = jax.jit(init_fn, out_shardings=state_sh)(init_rng, clip_params)
  else:
    state, rng = restored.state, restored.rng
    data_iter.set_state(restored.data_state)
    if main:
      print(f'Resumed from {ckpt.directory} at step {restored.step}', flush=True)
  del clip_params

  step_fn = sharding.jit_train_step(train_guard.guarded_step(make_step_fn(model, config)), (state_sh, rep), mesh)
  guard = jax.device_put(train_guard.init_guard(), rep)
  start, stop = int(jax.device_get(state.step)), t.stop_at_step or t.num_steps
  writer = tensorboardX.SummaryWriter(t.log_dir or os.path.join(workdir, 'tensorboard')) if main else None
  bar = tqdm.tqdm(total=t.num_steps, initial=start, disable=not main, desc='train', dynamic_ncols=True)
  result = {'step': start, 'train': {}, 'eval': {}}
  if start >= stop:  # a finished run: report what it measured (or evaluate it again)
    result = read_results(workdir, start) or {
        **result, 'eval': evaluate.evaluate_params(config, model, state.params, classify, mesh)}
  tick, tick_step = time.perf_counter(), start
  last_saved = ckpt.step_dir(start) if restored is not None else ''
  failed = True
  try:
    with train_guard.PreemptionSignal() as preemption:
      for step in range(start, stop):
        host_batch = next(data_iter)
        # The criterion point-samples at most a static budget of matched masks per batch.
        criterion.check_mask_budget(host_batch['valid'], config.model.decoder.num_queries,
                                    t.sampled_masks_per_image, where=f'train step {step}')
        batch = pipeline.to_device_batch(host_batch, mesh)
        (state, guard), metrics = step_fn((state, guard), batch, rng, text)
        done = step + 1
        ckpt.check_for_errors()  # a failed background save stops the run at the next step
        preempted = preemption.requested or (ckpt.reached_preemption(done) and 'preemption sync point')
        save_due = done % t.checkpoint_every == 0 or done == stop or preempted
        if step == start:  # the first step compiles: keep it out of img/s
          jax.block_until_ready(metrics)
          _log_scalars(writer, done, {'perf/compile_and_first_step_s': time.perf_counter() - tick})
          tick, tick_step = time.perf_counter(), done
        elif done % t.log_every == 0 or done == stop:
          metrics = jax.device_get(metrics)
          elapsed = time.perf_counter() - tick
          sec_per_step = elapsed / max(done - tick_step, 1)
          perf = {'perf/img_per_s': t.batch_size / sec_per_step,
                  'perf/eta_min': (t.num_steps - done) * sec_per_step / 60}
          nonfinite = {'train/nonfinite_steps': int(jax.device_get(guard['nonfinite']))}
          _log_scalars(writer, done, {**{f'train/{k}': v for k, v in metrics.items()}, **perf, **nonfinite})
          bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2e}",
                          img_s=f"{perf['perf/img_per_s']:.1f}", **({'skipped': nonfinite['train/nonfinite_steps']}
                                                                     if nonfinite['train/nonfinite_steps'] else {}))
          result['train'] = {k: float(v) for k, v in metrics.items()}
          if 'gfa_warning' not in result and (warning := gfa.health_warning(metrics, config.model.gfa.log_singular)):
            result['gfa_warning'] = warning  # once per run, loudly
            bar.write(f'step {done}: {warning}')
          tick, tick_step = time.perf_counter(), done
        bar.update(1)
        if save_due or done % t.log_every == 0 or done % t.eval_every == 0:  # never save past a divergence
          result['nonfinite_steps'] = train_guard.check_guard(guard, skip_nonfinite=t.skip_nonfinite,
                                                              last_checkpoint=last_saved)
        if ckpt.save(done, state, rng, data_iter.get_state(), force=done == stop or bool(preempted)):
          last_saved = ckpt.step_dir(done)
        if preempted:
          ckpt.wait()  # committed before the process exits
          raise train_guard.Preempted(done, ckpt.step_dir(done), preempted)
        if done % t.eval_every == 0:
          result['eval'] = evaluate.evaluate_params(config, model, state.params, classify, mesh)
          scalars = {k: float(v) for k, v in result['eval'].items() if _is_number(v)}
          _log_scalars(writer, done, {f'eval/{k}': v for k, v in scalars.items()})
          bar.write(f'step {done}: {config.eval.dataset} ' + ', '.join(f'{k} {v:.2f}' for k, v in scalars.items()))
        result['step'] = done
    failed = False
  finally:  # an exception still waits for the save in progress (its failure is reported if nothing else failed)
    bar.close()
    if writer is not None:
      writer.close()
    try:
      ckpt.close()
    except checkpointing.CheckpointError as e:
      if not failed:
        raise
      print(f'error: {e}', flush=True)
  if main and start < stop:
    write_results(workdir, result)
  return result
