"""Checkpointer: periodic keep-last-K saves, restore into shardings, crashes, damage, full disks.

Three tests run this file as a script (`python tests/test_checkpointing.py MODE DIR`):
- `crash`: the child saves step 1, starts the asynchronous save of step 2 and dies (`os._exit`)
  while it is being written; the latest readable checkpoint must be the complete step 1.
- `sigterm`: the child installs `train_guard.PreemptionSignal`, starts saving step 2 and sends
  itself SIGTERM mid-save; it must go on, commit step 2 and exit with `EXIT_PREEMPTED`.
- `full`: after step 1 the child's file-size limit (RLIMIT_FSIZE, a real kernel write failure,
  EFBIG) is lowered so that step 2's arrays cannot be written: the failure must surface at the
  next `check_for_errors` (the next training step), with no partial step 2 left on disk.
Damaged newest checkpoints (truncated, byte-flipped, emptied, ...) fall back to the previous one.
"""
import glob
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from ovsnet_jax import checkpointing
from ovsnet_jax import sharding
from ovsnet_jax import train
from ovsnet_jax import train_guard

CRASH_EXIT_CODE = 3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(shift: float = 0.0, big: bool = False) -> train.TrainState:
  """A real TrainState (real optimizer) of an OVSNet-like param tree; `big` makes writes slow."""
  rng = np.random.default_rng(0)
  n = 2048 if big else 8
  params = {
      'clip_visual': {'stem': {'kernel': jnp.ones((4, 4, 3, 8))}},
      'clip_logit_scale': jnp.asarray(4.6),
      'mask_decoder': {'kernel': jnp.asarray(rng.normal(size=(n, 1024)) + shift, jnp.float32),
                       'bias': jnp.full((7,), shift, jnp.float32)},
  }
  return train.create_train_state(params, common.get_base_config())


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _abstract(state):
  rep = sharding.replicated(sharding.make_mesh())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)


def _crash_worker(directory: str):
  ckpt = checkpointing.Checkpointer(directory, every=1, keep=3)
  ckpt.save(1, _state(0.0, big=True), jax.random.PRNGKey(1), {'position': 1})
  ckpt.wait()
  ckpt.save(2, _state(1.0, big=True), jax.random.PRNGKey(2), {'position': 2})  # returns before writing ends
  os._exit(CRASH_EXIT_CODE)  # the process dies mid-save: no finalize, no cleanup


def _sigterm_worker(directory: str):
  ckpt = checkpointing.Checkpointer(directory, every=1, keep=3)
  ckpt.save(1, _state(0.0, big=True), jax.random.PRNGKey(1), {'position': 1})
  ckpt.wait()
  with train_guard.PreemptionSignal() as preemption:
    ckpt.save(2, _state(1.0, big=True), jax.random.PRNGKey(2), {'position': 2})
    saving = ckpt._manager.is_saving_in_progress()
    os.kill(os.getpid(), signal.SIGTERM)  # mid-save: the handler only records it
    time.sleep(0.01)  # (the handler runs here)
    if preemption.requested:  # what the training loop does after its step
      ckpt.close()
      print(f'saving during the signal: {saving}; {preemption.requested}', flush=True)
      sys.exit(train_guard.EXIT_PREEMPTED)
  sys.exit(1)


def _full_disk_worker(directory: str):
  ckpt = checkpointing.Checkpointer(directory, every=1, keep=3)
  ckpt.save(1, _state(0.0, big=True), jax.random.PRNGKey(1), {'position': 1})
  ckpt.wait()
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
  resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
  try:
    ckpt.save(2, _state(1.0, big=True), jax.random.PRNGKey(2), {'position': 2})  # 24 MB of arrays
    while ckpt._manager.is_saving_in_progress():
      time.sleep(0.01)
    ckpt.check_for_errors()  # the loop calls this after every step
  except checkpointing.CheckpointError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    os._exit(4)
  os._exit(0)


def _run_worker(mode: str, directory: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, __file__, mode, directory], capture_output=True, text=True,
                        timeout=300, cwd=REPO,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu',
                             'PYTHONPATH': os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])})


def test_crash_during_save_restores_last_complete_checkpoint(tmp_path):
  directory = str(tmp_path / 'ckpt')
  proc = _run_worker('crash', directory)
  assert proc.returncode == CRASH_EXIT_CODE, proc.stderr[-3000:]
  leftovers = sorted(os.listdir(directory))
  assert '1' in leftovers and '2' not in leftovers
  assert any(name.startswith('2.orbax-checkpoint-tmp') for name in leftovers), leftovers  # the save was cut

  ckpt = checkpointing.Checkpointer(directory, every=1, keep=3)
  assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
  expected = _state(0.0, big=True)
  restored = ckpt.restore(_abstract(expected))
  assert restored.step == 1 and restored.data_state == {'position': 1}
  _assert_trees_equal(restored.state, expected)
  np.testing.assert_array_equal(restored.rng, jax.random.PRNGKey(1))
  # The run goes on: step 2 is saved again over the debris and becomes the latest.
  assert ckpt.save(2, _state(1.0, big=True), jax.random.PRNGKey(2), {'position': 2})
  ckpt.wait()
  assert ckpt.latest_step() == 2
  _assert_trees_equal(ckpt.restore(_abstract(expected)).state, _state(1.0, big=True))
  ckpt.close()


def test_periodic_keep_last_k_and_restore_a_given_step(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), every=2, keep=2, async_save=True)
  started = [ckpt.save(s, _state(float(s)), jax.random.PRNGKey(s), {'position': s}) for s in range(1, 7)]
  ckpt.wait()
  assert started == [False, True, False, True, False, True]
  assert ckpt.all_steps() == [4, 6]
  restored = ckpt.restore(_abstract(_state()), step=4)
  assert restored.step == 4 and restored.data_state == {'position': 4}
  _assert_trees_equal(restored.state, _state(4.0))
  assert ckpt.save(7, _state(7.0), jax.random.PRNGKey(7), {'position': 7}, force=True)  # off-period, forced
  ckpt.wait()
  restored = ckpt.restore(_abstract(_state()))
  assert restored.step == 7 and restored.data_state == {'position': 7}
  with pytest.raises(ValueError, match='data_state must be the data iterator state'):
    ckpt.save(8, _state(8.0), jax.random.PRNGKey(8), None)
  ckpt.close()


def test_restore_from_empty_directory_is_none(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'none'), every=1, keep=1)
  assert ckpt.latest_step() is None and ckpt.restore(_abstract(_state())) is None
  ckpt.close()


@pytest.mark.parametrize('kwargs,message', [
    (dict(every=0, keep=1), r'config.train.checkpoint_every must be > 0, got 0'),
    (dict(every=1, keep=-1), r'config.train.keep_checkpoints must be >= 0 \(0 = keep all\), got -1'),
])
def test_bad_settings(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    checkpointing.Checkpointer(str(tmp_path), **kwargs)


def test_sigterm_during_save_commits_it(tmp_path):
  directory = str(tmp_path / 'ckpt')
  proc = _run_worker('sigterm', directory)
  assert proc.returncode == train_guard.EXIT_PREEMPTED, proc.stderr[-3000:]
  assert 'SIGTERM received' in proc.stdout and 'SIGTERM' in proc.stdout.splitlines()[-1], proc.stdout
  ckpt = checkpointing.Checkpointer(directory, every=1, keep=3)
  restored = ckpt.restore(_abstract(_state(big=True)))
  assert restored.step == 2 and restored.data_state == {'position': 2}
  _assert_trees_equal(restored.state, _state(1.0, big=True))
  ckpt.close()


def test_full_disk_surfaces_at_the_next_step_and_leaves_no_partial_checkpoint(tmp_path):
  directory = str(tmp_path / 'ckpt')
  proc = _run_worker('full', directory)
  assert proc.returncode == 4, (proc.stdout[-2000:], proc.stderr[-3000:])
  assert f'error: saving checkpoint {directory}/2 failed: ' in proc.stderr, proc.stderr[-3000:]
  assert sorted(os.listdir(directory)) == ['1']  # no step 2, no temporary folder
  ckpt = checkpointing.Checkpointer(directory, every=1, keep=3)
  assert ckpt.restore(_abstract(_state(big=True))).step == 1
  ckpt.close()


def _largest_file(folder: str) -> str:
  files = [f for f in glob.glob(os.path.join(folder, '**'), recursive=True) if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_file(os.path.join(step_dir, 'state'))
  os.truncate(path, os.path.getsize(path) // 2)


def _flip_bytes(step_dir):
  path = _largest_file(os.path.join(step_dir, 'state'))
  with open(path, 'r+b') as f:
    data = bytearray(f.read())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    f.seek(0)
    f.write(data)


def _empty(step_dir):
  for name in os.listdir(step_dir):
    path = os.path.join(step_dir, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _empty_manifest(step_dir):
  os.truncate(os.path.join(step_dir, 'state', 'manifest.ocdbt'), 0)


@pytest.mark.parametrize('damage,reason', [
    (_truncate, ''), (_flip_bytes, ''), (_empty, "item 'state' is missing"), (_empty_manifest, ''),
    (lambda d: os.remove(os.path.join(d, 'state', '_METADATA')), ''),
    (lambda d: shutil.rmtree(os.path.join(d, 'data')), "item 'data' is missing (the data order cannot be resumed)"),
], ids=['truncated', 'flipped', 'emptied', 'empty_manifest', 'no_metadata', 'no_data_state'])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage, reason):
  directory = str(tmp_path / 'ckpt')
  ckpt = checkpointing.Checkpointer(directory, every=1, keep=3)
  for s in (1, 2):
    ckpt.save(s, _state(float(s)), jax.random.PRNGKey(s), {'position': s})
  ckpt.close()
  damage(os.path.join(directory, '2'))
  ckpt = checkpointing.Checkpointer(directory, every=1, keep=3)
  restored = ckpt.restore(_abstract(_state()))
  assert restored.step == 1 and restored.data_state == {'position': 1}
  _assert_trees_equal(restored.state, _state(1.0))
  out = capsys.readouterr().out
  assert f'damaged checkpoint(s) moved aside: {directory}/2 (' in out and reason in out, out
  assert sorted(os.listdir(directory)) == ['1', '2.damaged']
  assert ckpt.save(2, _state(2.0), jax.random.PRNGKey(2), {'position': 2})  # the step is saved afresh
  ckpt.wait()
  _assert_trees_equal(ckpt.restore(_abstract(_state())).state, _state(2.0))
  ckpt.close()


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  directory = str(tmp_path / 'ckpt')
  ckpt = checkpointing.Checkpointer(directory, every=1, keep=3)
  ckpt.save(1, _state(1.0), jax.random.PRNGKey(1), {'position': 1})
  ckpt.close()
  _flip_bytes(os.path.join(directory, '1'))
  ckpt = checkpointing.Checkpointer(directory, every=1, keep=3)
  with pytest.raises(checkpointing.CheckpointError, match=f'{directory}: no intact checkpoint: {directory}/1: '):
    ckpt.restore(_abstract(_state()))
  ckpt.close()


def test_checksums_see_every_bit_and_position():
  x = np.arange(12, dtype=np.float32).reshape(3, 4)
  base = checkpointing.array_checksums({'x': x})["['x']"]
  assert base.startswith('float32[3, 4]:')
  flipped = x.copy()
  flipped.view(np.uint32)[1, 2] ^= 1  # the lowest mantissa bit of one value
  swapped = x.copy()
  swapped[0, 0], swapped[0, 1] = x[0, 1], x[0, 0]
  sums = {checkpointing.array_checksums({'x': v})["['x']"] for v in (x, flipped, swapped, x.reshape(4, 3))}
  assert len(sums) == 4  # every change, a swap and a reshape give other checksums
  assert checkpointing.array_checksums({'x': x.copy()})["['x']"] == base
  # The numpy hash (host/CPU arrays) and the jitted one (accelerators) agree on every dtype.
  rng = np.random.default_rng(0)
  for v in (x, rng.normal(size=(3, 5)).astype(jnp.bfloat16), np.arange(7, dtype=np.int32), np.array([True, False]),
            np.uint8(200), rng.normal(size=(2, 3, 4)).astype(np.float16)):
    np.testing.assert_array_equal(checkpointing._np_leaf_checksum(v),
                                  jax.device_get(checkpointing._tree_checksums([jnp.asarray(v)]))[0])


if __name__ == '__main__':
  {'crash': _crash_worker, 'sigterm': _sigterm_worker, 'full': _full_disk_worker}[sys.argv[1]](sys.argv[2])
