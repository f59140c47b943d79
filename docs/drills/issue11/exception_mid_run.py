"""Drill: an exception in the training loop while a checkpoint save is in progress.

The tiny smoke run (6 steps, a checkpoint every 2, async saves) gets an OSError ("unreadable image",
injected into the host->device batch transfer) at step 3, right after step 2's background save
started. The process then dies at once (`os._exit`, as a crashing job does, killing any daemon
thread still writing). Expected: the exception reaches the caller, and checkpoint 2 is committed
and restorable (checksums verified), because the loop's `finally` waits for the save in progress.

  PYTHONPATH=$PWD JAX_PLATFORMS=cpu python docs/drills/issue11/exception_mid_run.py /tmp/drill_exc

Control: with DRILL_NO_WAIT=1 the loop's wait is patched out (`Checkpointer.close` does nothing), which
is what the drill must catch: checkpoint 2 is then lost or incomplete.
"""
import os
import subprocess
import sys


def crash(workdir: str) -> None:
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from ovsnet_jax import train  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.input import pipeline  # pylint: disable=g-import-not-at-top
  config = smoke.get_config('tiny')
  config.train.checkpoint_every, config.train.eval_every = 2, 1000
  real, calls = pipeline.to_device_batch, []

  def failing(batch, mesh):
    calls.append(1)
    if len(calls) == 3:
      raise OSError('drill: unreadable image in the batch of step 3')
    return real(batch, mesh)

  pipeline.to_device_batch = failing
  if os.environ.get('DRILL_NO_WAIT'):  # the control: the loop without its wait for the save in progress
    from ovsnet_jax import checkpointing  # pylint: disable=g-import-not-at-top
    checkpointing.Checkpointer.close = lambda self: None
  try:
    train.train_and_evaluate(config, workdir)
  except OSError as e:
    print(f'train_and_evaluate raised: {e}', flush=True)
    os._exit(1)  # pylint: disable=protected-access
  os._exit(0)  # pylint: disable=protected-access


def check(workdir: str) -> None:
  from ovsnet_jax import checkpointing, evaluate  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), every=1, keep=0)
  steps = ckpt.all_steps()
  ckpt.close()
  print(f'checkpoints after the crash: {steps}')
  evaluate.load_params(workdir)  # verifies every checksum, refuses non-finite values
  print('checkpoint 2 restores with every checksum verified' if steps == [2] else 'UNEXPECTED')
  sys.exit(0 if steps == [2] else 1)


if __name__ == '__main__':
  if sys.argv[1] == '--crash':
    crash(sys.argv[2])
  elif sys.argv[1] == '--check':
    check(sys.argv[2])
  else:
    out = subprocess.run([sys.executable, __file__, '--crash', sys.argv[1]], capture_output=True, text=True)
    print(out.stdout[-2000:], out.stderr[-1500:] if out.returncode != 1 else '', f'exit code {out.returncode}')
    if out.returncode != 1:
      sys.exit('UNEXPECTED: the injected exception did not end the run')
    subprocess.run([sys.executable, __file__, '--check', sys.argv[1]], check=True)
