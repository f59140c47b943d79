"""What stops a training run cleanly: non-finite steps (divergence) and preemption signals.

Divergence: `train.train_step` applies no update when the loss or the gradient norm is not finite
(the step counter still advances: the batch is consumed). `guarded_step` folds that into a small
device-side `guard` carried through the loop, {'first_nonfinite': int32, the 1-based number of
the first non-finite step, 0 = none; 'nonfinite': int32, how many}, so nothing is read back per
step; the loop reads it (`check_guard`) only where it syncs anyway: log and checkpoint boundaries.
Without `config.train.skip_nonfinite` the first non-finite step ends the run (`Diverged`) before
any later state is saved; with it, such batches are skipped and counted.

Preemption: `PreemptionSignal` turns SIGTERM (what SLURM and Cloud TPU send before they stop a
job) and SIGINT into a request the loop reads after each step: it finishes the step, saves, waits
for the save to commit and raises `Preempted`; `launch/train.py` exits with `EXIT_PREEMPTED`.
On multi-process runs the signal handlers are not installed: JAX's preemption service (started
by `jax.distributed.initialize`) catches SIGTERM and orbax's `reached_preemption(step)` names the
step at which all hosts save. A second signal gets the default behaviour back (SIGINT raises
KeyboardInterrupt, after which the loop still waits for the save in progress).
"""
import signal
import threading
from typing import Callable

import jax
import jax.numpy as jnp

EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: "try again later" -- re-running the command resumes.
EXIT_DIVERGED = 3


class Preempted(Exception):
  """The run stopped on a preemption signal after saving a checkpoint at `step`."""

  def __init__(self, step: int, checkpoint: str, signal_name: str):
    super().__init__(f'{signal_name}: stopped after step {step}; checkpoint {checkpoint} is saved and committed. '
                     'Run the same command again to resume.')
    self.step = step


class Diverged(Exception):
  """A step had a non-finite loss or gradient norm (and `skip_nonfinite` is off)."""

  def __init__(self, step: int, last_checkpoint: str):
    super().__init__(
        f'training diverged: non-finite loss or gradient norm at step {step} (that update was not applied and '
        f'no later state was saved). Last good checkpoint: {last_checkpoint or "none"}. Lower config.train.lr, '
        'set config.train.grad_clip, or pass --config.train.skip_nonfinite=True to skip such batches.')
    self.step = step


def init_guard() -> dict:
  return {'first_nonfinite': jnp.zeros((), jnp.int32), 'nonfinite': jnp.zeros((), jnp.int32)}


def guarded_step(step_fn: Callable) -> Callable:
  """`((state, guard), batch, rng, text) -> ((state, guard), metrics)` around a step with `metrics['finite']`."""
  def step(carry, batch, rng, text):
    state, guard = carry
    number = state.step + 1  # the 1-based step number the loop reports
    state, metrics = step_fn(state, batch, rng, text)
    bad = jnp.logical_not(metrics.pop('finite'))
    first = jnp.where((guard['first_nonfinite'] == 0) & bad, number, guard['first_nonfinite'])
    return (state, {'first_nonfinite': first, 'nonfinite': guard['nonfinite'] + bad.astype(jnp.int32)}), metrics
  return step


def check_guard(guard: dict, *, skip_nonfinite: bool, last_checkpoint: str) -> int:
  """Reads the guard (a sync); raises `Diverged` unless `skip_nonfinite`; returns the non-finite count."""
  guard = jax.device_get(guard)
  if int(guard['first_nonfinite']) and not skip_nonfinite:
    raise Diverged(int(guard['first_nonfinite']), last_checkpoint)
  return int(guard['nonfinite'])


class PreemptionSignal:
  """`with PreemptionSignal() as s: ... if s.requested: ...`: SIGTERM/SIGINT set `requested`."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = ''  # the signal's name once one arrived
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name
    print(f'\n{self.requested} received: finishing this step, then saving a checkpoint '
          '(send it again to stop at once).', flush=True)
    for sig, previous in self._previous.items():  # a second signal: the default behaviour
      signal.signal(sig, previous)

  def __enter__(self) -> 'PreemptionSignal':
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}
