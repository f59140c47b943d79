"""Orbax checkpoints of a training run, verified on restore: train state, rng, data position.

Each checkpoint `<workdir>/checkpoints/<step>/` holds four items:
- `state`: the train state pytree (`step`, `params`, `opt_state`), restored straight into the
  shardings of the target;
- `rng`: the run's base PRNG key (per-step keys are `fold_in(rng, step)`);
- `data`: the grain iterator state, JSON (`DatasetIterator.get_state()`); required: a checkpoint
  without it would restart the data order, so it counts as damaged;
- `checksums`: a 64-bit checksum of every array of `state` and `rng` (computed on the device,
  `array_checksums`) and the SHA-256 of the data state.

Saves are periodic (`every` steps), asynchronous (the device-to-host copy is done before `save`
returns, so the state buffers may be donated right after) and keep the last `keep`. Orbax writes
into a temporary directory and renames it only once every item is written, so a crash during a
save leaves at most a temporary directory that `restore` ignores. A background save that failed
(full disk, ...) raises `CheckpointError` at the next `check_for_errors` / `wait` / `save`.

`restore` verifies every checksum and falls back to the newest intact step, with a warning naming
each damaged directory (which is renamed `<step>.damaged`, so that step is saved afresh); it
raises `CheckpointError` when checkpoints exist but none is intact (never a silent fresh start).
"""
import glob
import hashlib
import json
import logging as pylogging
import os
import re
import shutil
from typing import Any, NamedTuple, Optional

from absl import logging
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(Exception):
  """A checkpoint could not be written, or none of those on disk is intact."""


class Restored(NamedTuple):
  step: int
  state: Any
  rng: jax.Array
  data_state: dict


# ----------------------------------------------------------------------------------------------
# Checksums.

def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer (uint32 -> uint32, a bijection that mixes every bit)."""
  h = h ^ (h >> 16)
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _as_uint32(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32, elementwise (64-bit types gain a trailing axis of 2)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  bits = jnp.dtype(x.dtype).itemsize * 8
  if bits == 32 or bits == 64:
    return lax.bitcast_convert_type(x, jnp.uint32)
  return lax.bitcast_convert_type(x, jnp.dtype(f'uint{bits}')).astype(jnp.uint32)


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """uint32 (2,): two position-dependent hash sums of the bits of `x` (no reshape: sharding-safe)."""
  u = _as_uint32(x)
  index, stride = jnp.zeros(u.shape, jnp.uint32), 1
  for d in reversed(range(u.ndim)):
    index = index + lax.broadcasted_iota(jnp.uint32, u.shape, d) * np.uint32(stride % 2**32)
    stride *= u.shape[d]
  a = jnp.sum(_fmix32(u ^ _fmix32(index * np.uint32(0x9E3779B9) + np.uint32(1))), dtype=jnp.uint32)
  b = jnp.sum(_fmix32(u + _fmix32(index ^ np.uint32(0x5BD1E995))), dtype=jnp.uint32)
  return jnp.stack([a, b])


_tree_checksums = jax.jit(lambda leaves: [_leaf_checksum(x) for x in leaves])


def _np_fmix32(h: np.ndarray) -> np.ndarray:
  h = h ^ (h >> np.uint32(16))
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> np.uint32(13))
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> np.uint32(16))


def _np_leaf_checksum(x: np.ndarray) -> np.ndarray:
  """`_leaf_checksum` in numpy (the same value): no compilation, for host and CPU arrays."""
  x = np.asarray(x)
  if x.dtype == np.bool_:
    u = x.astype(np.uint32)
  elif x.dtype.itemsize == 8:
    u = np.ascontiguousarray(x).view(np.uint32).reshape(x.shape + (2,))
  elif x.dtype.itemsize == 4:
    u = x.view(np.uint32)
  else:
    u = x.view(np.dtype(f'uint{x.dtype.itemsize * 8}')).astype(np.uint32)
  index = np.arange(u.size, dtype=np.uint64).astype(np.uint32).reshape(u.shape)
  with np.errstate(over='ignore'):
    a = np.sum(_np_fmix32(u ^ _np_fmix32(index * np.uint32(0x9E3779B9) + np.uint32(1))), dtype=np.uint32)
    b = np.sum(_np_fmix32(u + _np_fmix32(index ^ np.uint32(0x5BD1E995))), dtype=np.uint32)
  return np.stack([a, b])


def _on_host(x: Any) -> bool:
  """A numpy array, or a jax array held by this process on CPU devices only."""
  if not isinstance(x, jax.Array):
    return True
  return jax.process_count() == 1 and all(d.platform == 'cpu' for d in x.sharding.device_set)


def array_checksums(tree: Any) -> dict:
  """{key path: 'dtype[shape]:<16 hex digits>'} of every array leaf of `tree`.

  Accelerator arrays are hashed on the device (one jitted call, sharding-safe); host and CPU arrays
  in numpy (identical values, no compilation: a jitted hash of a whole train state costs minutes of
  XLA:CPU compilation).
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  leaves = [x for _, x in flat]
  if all(_on_host(x) for x in leaves):
    sums = [_np_leaf_checksum(x) for x in leaves]
  else:
    sums = jax.device_get(_tree_checksums(leaves))
  return {jax.tree_util.keystr(path): f'{np.dtype(x.dtype).name}{list(x.shape)}:{int(s[0]):08x}{int(s[1]):08x}'
          for (path, x), s in zip(flat, sums)}


def canonical_keys(sums: dict) -> dict:
  """`array_checksums` keys with attribute steps written as dict keys (`.params[...]` -> `['params'][...]`),
  so that a state restored without a target (dicts for dataclasses) matches."""
  return {re.sub(r"\.([A-Za-z_]\w*)", r"['\1']", k): v for k, v in sums.items()}


def json_checksum(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def checksum_record(state: Any, rng: jax.Array, data_state: dict) -> dict:
  return {'state': array_checksums(state), 'rng': array_checksums({'rng': rng}), 'data': json_checksum(data_state)}


def verify_checksums(expected: dict, actual: dict, where: str) -> None:
  """Raises CheckpointError naming the first array whose checksum differs (or is missing)."""
  for key in sorted(set(expected) | set(actual)):
    if expected.get(key) != actual.get(key):
      raise CheckpointError(f'{where}: checksum mismatch for {key or "the data state"} '
                            f'(stored {expected.get(key)}, read {actual.get(key)})')


# ----------------------------------------------------------------------------------------------

class Checkpointer:
  """Periodic, keep-last-K, asynchronous, verified checkpoints of `{state, rng, data}`."""

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
    self._pending = None  # the step of the save in flight
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, max_to_keep=keep or None, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._errors = _LastError()
    pylogging.getLogger('absl').addHandler(self._errors)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> Optional[int]:
    """The newest committed checkpoint's step (not verified: see `restore`), None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list:
    return sorted(self._manager.all_steps())

  def reached_preemption(self, step: int) -> bool:
    """True at the step all hosts agreed to save at after a preemption notice (multi-process JAX)."""
    return self._manager.reached_preemption(step)

  def save(self, step: int, state: Any, rng: jax.Array, data_state: dict, *, force: bool = False) -> bool:
    """Starts saving at `step` if it is due (or `force`); returns whether a save started.

    Raises CheckpointError when the previous background save failed.
    """
    if not isinstance(data_state, dict):
      raise ValueError(f'Checkpointer.save: data_state must be the data iterator state (a dict), got {data_state!r}')
    self.check_for_errors()
    if (not force and step % self.every) or step in self._manager.all_steps():
      return False
    checksums = checksum_record(state, rng, data_state)  # waits for `state`: the save copies it anyway
    items = {'state': ocp.args.StandardSave(state), 'rng': ocp.args.StandardSave({'rng': rng}),
             'data': ocp.args.JsonSave(data_state), 'checksums': ocp.args.JsonSave(checksums)}
    try:
      started = self._manager.save(int(step), args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # pylint: disable=broad-except (orbax/tensorstore raise many types)
      self._failed(step, e)
    self._pending = int(step) if started else None
    return started

  def check_for_errors(self) -> None:
    """Raises CheckpointError if the last background save failed (cheap: no waiting).

    Orbax's manager logs a failed background commit and drops the exception, so a save counts as
    failed when it is no longer in progress and its step folder was not committed.
    """
    try:
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      self._failed(self._pending, e)
    if self._pending is not None and not self._manager.is_saving_in_progress():
      if not os.path.isdir(self.step_dir(self._pending)):
        self._failed(self._pending, None)
      self._pending = None

  def wait(self) -> None:
    """Blocks until a pending asynchronous save is committed; raises CheckpointError if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._failed(self._pending, e)
    self.check_for_errors()

  def _failed(self, step: Optional[int], e: Optional[Exception]):
    self._pending = None
    if jax.process_index() == 0 and step is not None:  # no partial checkpoint left behind
      for tmp in glob.glob(os.path.join(glob.escape(self.directory), f'{step}.orbax-checkpoint-tmp*')):
        shutil.rmtree(tmp, ignore_errors=True)
    where = self.step_dir(step) if step is not None else self.directory
    why = _reason(e) if e is not None else (self._errors.last or 'the background write failed (see the log)')
    raise CheckpointError(f'saving checkpoint {where} failed: {why}') from e

  def restore(self, abstract_state: Any, abstract_rng: Any = None, step: Optional[int] = None) -> Optional[Restored]:
    """Restores and verifies the newest intact checkpoint (or the given step); None when there is none.

    Args:
      abstract_state: the state's `jax.eval_shape` with `.sharding` set on each leaf (e.g.
        `jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), ...)`);
        arrays come back with those shardings.
      abstract_rng: the same for the rng (default: restored as saved, on the default device).
      step: a specific step (no fallback); default the newest intact one.

    Raises:
      CheckpointError: `step` is damaged, or checkpoints exist and none is intact.
    """
    steps = self._candidate_steps() if step is None else [step]
    damaged = []
    for s in steps:
      try:
        restored = self._restore_verified(s, abstract_state, abstract_rng)
      except Exception as e:  # pylint: disable=broad-except (orbax raises many types on damage)
        damaged.append((s, _reason(e)))
        logging.warning('checkpoint %s is damaged or incomplete (%s); trying the previous one',
                        self.step_dir(s), _reason(e))
        continue
      self._quarantine([d for d, _ in damaged])
      if damaged:
        print(f'warning: restored {self.step_dir(s)}; damaged checkpoint(s) moved aside: '
              + ', '.join(f'{self.step_dir(d)} ({why})' for d, why in damaged), flush=True)
      return restored
    if damaged:
      raise CheckpointError(f'{self.directory}: no intact checkpoint: '
                            + '; '.join(f'{self.step_dir(d)}: {why}' for d, why in damaged))
    return None

  def _candidate_steps(self) -> list:
    """Committed steps plus any step-named folder (an emptied or half-deleted one), newest first."""
    names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
    return sorted(set(self._manager.all_steps()) | {int(n) for n in names if n.isdigit()}, reverse=True)

  def _restore_verified(self, step: int, abstract_state: Any, abstract_rng: Any) -> Restored:
    where = self.step_dir(step)
    for item in ('state', 'rng', 'data', 'checksums'):
      if not os.path.isdir(os.path.join(where, item)):
        raise CheckpointError(f'item {item!r} is missing' + (' (the data order cannot be resumed)'
                                                              if item == 'data' else ''))
    rng_target = None if abstract_rng is None else {'rng': abstract_rng}
    items = {'state': ocp.args.StandardRestore(abstract_state), 'rng': ocp.args.StandardRestore(rng_target),
             'data': ocp.args.JsonRestore(), 'checksums': ocp.args.JsonRestore()}
    out = self._manager.restore(step, args=ocp.args.Composite(**items))
    expected = out['checksums']
    actual = checksum_record(out['state'], out['rng']['rng'], out['data'])
    for item in ('state', 'rng'):
      verify_checksums(expected[item], actual[item], f'{item}')
    verify_checksums({'': expected['data']}, {'': actual['data']}, 'data')
    return Restored(step=int(step), state=out['state'], rng=out['rng']['rng'], data_state=out['data'])

  def _quarantine(self, steps: list) -> None:
    """Renames damaged step folders to `<step>.damaged[.N]` (process 0), so the step is saved again."""
    if steps and jax.process_index() == 0:
      for s in steps:
        target, n = self.step_dir(s) + '.damaged', 1
        while os.path.exists(target):
          target, n = f'{self.step_dir(s)}.damaged.{n}', n + 1
        if os.path.exists(self.step_dir(s)):
          os.rename(self.step_dir(s), target)
    if steps:
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        multihost_utils.sync_global_devices('ovsnet_jax_checkpoint_quarantine')
      self._manager.reload()

  def close(self):
    """Waits for the pending save (raising CheckpointError if it failed) and closes the manager."""
    try:
      self.wait()
    finally:
      self._manager.close()
      pylogging.getLogger('absl').removeHandler(self._errors)


class _LastError(pylogging.Handler):
  """Keeps the first line of the last ERROR logged with an exception (orbax's background saves)."""

  def __init__(self):
    super().__init__(level=pylogging.ERROR)
    self.last = ''

  def emit(self, record):
    if record.exc_info and record.exc_info[1] is not None:
      self.last = _reason(record.exc_info[1])


def _reason(e: BaseException) -> str:
  """A one-line reason: the exception's type and the first line of its message."""
  text = str(e).strip().splitlines()
  if not text:
    return type(e).__name__
  line = text[0] if len(text[0]) <= 300 else f'{text[0][:140]} ... {text[0][-150:]}'  # keep the OS reason
  return f'{type(e).__name__}: {line}'
