"""Outputs on a full disk, and what eval/export refuse to load.

A "full disk" here is a real kernel write failure: the process's file-size limit (RLIMIT_FSIZE)
is lowered below the output's size, so the write fails with EFBIG the way a full disk fails
with ENOSPC (SIGXFSZ ignored). Every writer must raise `atomic_io.OutputError` naming the path,
leave an existing file untouched and leave no temporary file behind.
"""
import contextlib
import json
import os
import re
import resource
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from ovsnet_jax import atomic_io, checkpointing, cli, evaluate, train
from ovsnet_jax.convert import export_torch
from ovsnet_jax.openbench import build, similarity


@contextlib.contextmanager
def file_size_limit(nbytes: int):
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


def _write_results(path):
  evaluate.write_results({'mIoU': 41.5, 'IoU': {f'class {i}': float(i) for i in range(5000)}}, path)


def _write_export(path):
  export_torch.save({'w': np.ones((512, 512), np.float32)}, {'step': 1}, path, overwrite=True)


def _write_figure(path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots()
  ax.imshow(np.random.default_rng(0).random((300, 300)))
  similarity.save_figure(fig, path)
  plt.close(fig)


@pytest.mark.parametrize('name,write', [
    ('results.json', _write_results),
    ('model.safetensors', _write_export),
    ('class_names.txt', lambda p: build.atomic_write(p, 'x' * 100_000)),
    ('similarity.json', lambda p: similarity.write_json({'x': list(range(30_000))}, p)),
    ('histogram.png', _write_figure),
])
def test_full_disk_fails_at_once_naming_the_path_and_keeps_the_old_file(tmp_path, name, write):
  path = str(tmp_path / name)
  with open(path, 'w') as f:
    f.write('old')
  with file_size_limit(16 * 1024), pytest.raises(atomic_io.OutputError, match=f'cannot write {path}: .*File too large'):
    write(path)
  assert os.listdir(tmp_path) == [name]  # no temporary file left (nor, for the export, its sidecar)
  assert open(path).read() == 'old'
  if name == 'results.json':  # and it works without the limit
    _write_results(path)
    assert json.load(open(path))['mIoU'] == 41.5


def _save_checkpoint(directory: str, params: dict) -> None:
  state = train.create_train_state(params, common.get_base_config())
  ckpt = checkpointing.Checkpointer(directory, every=1, keep=1)
  ckpt.save(3, state, jax.random.PRNGKey(0), {'position': 3})
  ckpt.close()


def test_load_params_refuses_a_diverged_checkpoint(tmp_path):
  params = {'mask_decoder': {'kernel': jnp.asarray([[1.0, np.nan], [np.inf, 2.0]]), 'bias': jnp.zeros(3)}}
  _save_checkpoint(str(tmp_path / 'checkpoints'), params)
  with pytest.raises(cli.UserError, match=(f'{tmp_path}/checkpoints/3: the params hold 2 NaN/infinite values in 1 '
                                           r"arrays \(first: \['mask_decoder'\]\['kernel'\]\): the run diverged")):
    evaluate.load_params(str(tmp_path))


def test_load_params_verifies_checksums(tmp_path):
  params = {'mask_decoder': {'kernel': jnp.arange(4096, dtype=jnp.float32).reshape(64, 64)}}
  _save_checkpoint(str(tmp_path / 'checkpoints'), params)
  np.testing.assert_array_equal(evaluate.load_params(str(tmp_path))['mask_decoder']['kernel'],
                                params['mask_decoder']['kernel'])
  sums = tmp_path / 'checkpoints' / '3' / 'checksums' / 'metadata'
  record = json.loads(sums.read_text())
  key = ".params['mask_decoder']['kernel']"  # TrainState.params: an attribute
  record['state'][key] = record['state'][key][:-4] + '0000'  # as if the array had changed on disk
  sums.write_text(json.dumps(record))
  with pytest.raises(cli.UserError, match=re.escape("checksum mismatch for ['params']['mask_decoder']['kernel']")
                     + '.*the checkpoint is damaged'):
    evaluate.load_params(str(tmp_path))
