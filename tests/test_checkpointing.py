"""Checkpointer: periodic keep-last-K saves, restore into shardings, a crash during a save.

The crash test runs this file as a script (`python tests/test_checkpointing.py crash DIR`): the
child saves step 1, starts the asynchronous save of step 2 and dies (`os._exit`) while it is
being written. The parent then checks that the latest readable checkpoint is the complete step 1.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from ovsnet_jax import checkpointing
from ovsnet_jax import sharding
from ovsnet_jax import train

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


def test_crash_during_save_restores_last_complete_checkpoint(tmp_path):
  directory = str(tmp_path / 'ckpt')
  proc = subprocess.run([sys.executable, __file__, 'crash', directory], capture_output=True, text=True,
                        timeout=300, cwd=REPO,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu',
                             'PYTHONPATH': os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])})
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
  assert ckpt.save(7, _state(7.0), jax.random.PRNGKey(7), None, force=True)  # off-period but forced
  ckpt.wait()
  restored = ckpt.restore(_abstract(_state()))
  assert restored.step == 7 and restored.data_state is None
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


if __name__ == '__main__':
  if sys.argv[1] == 'crash':
    _crash_worker(sys.argv[2])
