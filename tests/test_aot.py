"""Deviceless TPU AOT compile (libtpu, no TPU): the smoke config's train step for a v5e topology."""
import jax
import numpy as np
import pytest

from configs import smoke
from ovsnet_jax import aot, train
from ovsnet_jax.models import ovsnet


def test_smoke_train_step_compiles_and_fits_v5e():
  config = smoke.get_config('tiny')
  config.train.batch_size = 4  # one image per chip of v5e:2x2
  logs = []
  rep = aot.compile_for(config, 'v5e:2x2', 'train', num_classes=11, log=logs.append)
  assert logs[0].startswith('train @ v5e:2x2: 4 x TPU v5e, per device:')
  state = jax.eval_shape(lambda: train.create_train_state(ovsnet.init_params(config, jax.random.PRNGKey(0)), config))
  state_bytes = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
  # The replicated state is an argument of every device (TPU layouts may pad it, never shrink it).
  assert rep['argument_bytes'] >= state_bytes
  assert rep['temp_bytes'] > 0 and rep['code_bytes'] > 0 and rep['flops'] > 0 and rep['bytes_accessed'] > 0
  assert rep['total_bytes'] <= rep['hbm_bytes'] == 16 * aot.GIB
  chip = aot.CHIPS['v5e']
  assert rep['roofline_s'] == max(rep['flops'] / chip.peak_flops, rep['bytes_accessed'] / chip.hbm_bytes_per_s)


def test_check_fits_names_the_overflow():
  rep = {'argument_bytes': 2 * aot.GIB, 'temp_bytes': 15 * aot.GIB, 'output_bytes': aot.GIB,
         'alias_bytes': aot.GIB, 'total_bytes': 17 * aot.GIB, 'hbm_bytes': 16 * aot.GIB}
  with pytest.raises(ValueError, match=r'train @ v5e:2x2 does not fit: 17.00 GiB per chip \(arguments 2.00 \+ '
                                       r'temporaries 15.00 \+ outputs\) > 16 GiB HBM'):
    aot.check_fits(rep, 'train @ v5e:2x2')
  aot.check_fits({**rep, 'total_bytes': 16 * aot.GIB}, 'train @ v5e:2x2')  # exactly full fits


def test_bad_topology_is_named():
  with pytest.raises(ValueError, match=r"--topology='v9:2x2': expected 'local' or '<chip>:<shape>'"):
    aot.topology_devices('v9:2x2')
  with pytest.raises(ValueError, match=r"--topology='v5e:3x7': libtpu could not describe it"):
    aot.topology_devices('v5e:3x7')
