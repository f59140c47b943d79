"""Orbax checkpoints of a training run: train state, rng and data-iterator position.

Each checkpoint `<workdir>/checkpoints/<step>/` holds three items:
- `state`: the train state pytree (`step`, `params`, `opt_state`), restored straight into the
  shardings of the target;
- `rng`: the run's base PRNG key (per-step keys are `fold_in(rng, step)`);
- `data`: the grain iterator state, JSON (`DatasetIterator.get_state()`).

Saves are periodic (`every` steps), asynchronous (the device-to-host copy is done before `save`
returns, so the state buffers may be donated right after) and keep the last `keep`. Orbax writes
into a temporary directory and renames it only once every item is written, so a crash during a
save leaves at most a temporary directory that `latest_step` and `restore` ignore.
"""
import os
from typing import Any, NamedTuple, Optional

import jax
import orbax.checkpoint as ocp


class Restored(NamedTuple):
  step: int
  state: Any
  rng: jax.Array
  data_state: Optional[dict]


class Checkpointer:
  """Periodic, keep-last-K, asynchronous checkpoints of `{state, rng, data}`."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    """Args:
      directory: where the step directories go (created if missing).
      every: save when `step % every == 0` (and whenever `force=True`).
      keep: number of most recent checkpoints kept (0 = all).
      async_save: write in a background thread.
    """
    if every <= 0:
      raise ValueError(f'config.train.checkpoint_every must be > 0, got {every}')
    if keep < 0:
      raise ValueError(f'config.train.keep_checkpoints must be >= 0 (0 = keep all), got {keep}')
    self.directory = os.path.abspath(directory)
    self.every = every
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, max_to_keep=keep or None, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step, None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, rng: jax.Array, data_state: Optional[dict], *, force: bool = False) -> bool:
    """Starts saving at `step` if it is due (or `force`); returns whether a save started."""
    if (not force and step % self.every) or step in self._manager.all_steps():
      return False
    items = {'state': ocp.args.StandardSave(state), 'rng': ocp.args.StandardSave({'rng': rng})}
    if data_state is not None:
      items['data'] = ocp.args.JsonSave(data_state)
    return self._manager.save(int(step), args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state: Any, abstract_rng: Any = None, step: Optional[int] = None) -> Optional[Restored]:
    """Restores the latest (or the given) complete checkpoint; None when there is none.

    Args:
      abstract_state: the state's `jax.eval_shape` with `.sharding` set on each leaf (e.g.
        `jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), ...)`);
        arrays come back with those shardings.
      abstract_rng: the same for the rng (default: restored as saved, on the default device).
      step: a specific step; default the latest.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    rng_target = None if abstract_rng is None else {'rng': abstract_rng}
    items = {'state': ocp.args.StandardRestore(abstract_state), 'rng': ocp.args.StandardRestore(rng_target)}
    has_data = os.path.isdir(os.path.join(self.directory, str(step), 'data'))
    if has_data:
      items['data'] = ocp.args.JsonRestore()
    out = self._manager.restore(step, args=ocp.args.Composite(**items))
    return Restored(step=int(step), state=out['state'], rng=out['rng']['rng'],
                    data_state=out['data'] if has_data else None)

  def wait(self):
    """Blocks until a pending asynchronous save is finalized."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
