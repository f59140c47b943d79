"""The train step and the training loop on the real tiny OVSNet and the shapes pipeline (CPU).

- one train step at a time on a fixed batch: the loss falls, the frozen CLIP stays bit-identical,
  every metric is there and the learning rate follows the schedule;
- exact resume after preemption: a `launch/train.py` run sent SIGTERM while it saves step 2 finishes
  its step, saves, exits with `EXIT_PREEMPTED`; started again on its workdir it ends with
  bit-identical parameters, optimizer state and data-iterator position to an uninterrupted run
  (three processes sharing one XLA compilation cache, so the step compiles once);
- divergence (`lr=1e6`, no clipping, the issue's drill): the run stops with `EXIT_DIVERGED` naming
  the first step whose loss or gradient norm is not finite (the TensorBoard log, written every
  step, shows it), its last checkpoints are the steps before it, verified and finite;
- flag and config errors are one line with exit code 2;
- TensorBoard event files (read back record by record, CRCs checked) hold the logged scalars;
- bad config fields raise errors naming the field.
"""
import glob
import os
import re
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

import launcher_env
from configs import smoke
from ovsnet_jax import checkpointing, evaluate, optim, sharding, train, train_guard
from ovsnet_jax.input import pipeline
from ovsnet_jax.models import ovsnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_scalars(logdir: str) -> dict:
  """{tag: {step: value}} from the tensorboardX event files in `logdir` (CRCs verified)."""
  out = {}
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    with open(path, 'rb') as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      header = data[pos:pos + 8]
      assert struct.unpack('I', data[pos + 8:pos + 12])[0] == masked_crc32c(header)
      n = struct.unpack('Q', header)[0]
      record = data[pos + 12:pos + 12 + n]
      assert struct.unpack('I', data[pos + 12 + n:pos + 16 + n])[0] == masked_crc32c(record)
      pos += 16 + n
      event = event_pb2.Event.FromString(record)
      for v in event.summary.value:
        out.setdefault(v.tag, {})[event.step] = v.simple_value
  return out


def test_train_step_lowers_loss_on_a_fixed_batch_and_keeps_clip_frozen():
  config = smoke.get_config('tiny')
  config.train.num_steps, config.train.warmup_steps = 100, 0
  mesh = sharding.make_mesh()
  _, clip_params = train.load_clip(config)
  reader = train._reader(config, 'shapes', 'train', semantic=False)
  names, _ = evaluate.dataset_vocabulary(config, 'shapes', reader)
  text = train.text_classifier(config, clip_params, cache_dir='')(names)
  model = ovsnet.build_model(config)
  state = train.create_train_state(ovsnet.init_params(config, jax.random.PRNGKey(0), clip_params), config)
  clip_before = jax.device_get({k: state.params[k] for k in optim.FROZEN_KEYS})
  ds = pipeline.train_dataset(reader, global_batch_size=config.train.batch_size, crop_size=config.data.crop_size,
                              max_masks=config.data.max_masks, scale_range=tuple(config.data.scale_range))
  batch = pipeline.to_device_batch(next(iter(ds)), mesh)
  step = jax.jit(train.make_step_fn(model, config), donate_argnums=0)
  losses, lrs = [], []
  for _ in range(6):
    state, metrics = step(state, batch, jax.random.PRNGKey(1), text)
    losses.append(float(metrics['loss']))
    lrs.append(float(metrics['lr']))
  assert losses[-1] < 0.9 * losses[0], losses
  assert int(state.step) == 6
  schedule = optim.learning_rate_schedule(config.train)
  np.testing.assert_allclose(lrs, [float(schedule(s)) for s in range(6)], rtol=1e-6)
  for name in ('loss', 'lr', 'l2_grads', 'l2_params', 'loss_ce', 'loss_mask', 'loss_dice', 'gfa/spectral_bound',
               'gfa/condition', 'gfa/residual', 'gfa/fused_cosine', 'gfa/own_nearest', 'gfa/num_singular'):
    assert name in metrics and np.isfinite(float(metrics[name])), name
  assert float(metrics['l2_grads']) > 0
  jax.tree.map(np.testing.assert_array_equal, clip_before,
               jax.device_get({k: state.params[k] for k in optim.FROZEN_KEYS}))


def _restore(workdir: str):
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), every=1, keep=0)
  step = ckpt.latest_step()
  items = ckpt._manager.restore(step)  # raw restore: every array as saved
  ckpt.close()
  return step, items


def subprocess_env() -> dict:
  return launcher_env.launcher_env()


def train_command(workdir: str, *overrides: str) -> list:
  """`launch/train.py --config=configs/smoke.py:tiny` without evaluation, plus overrides."""
  return [sys.executable, 'launch/train.py', '--config=configs/smoke.py:tiny', f'--workdir={workdir}',
          '--config.train.eval_every=1000', *overrides]


def launch_train(workdir: str, *overrides: str, returncode: int = 0) -> subprocess.CompletedProcess:
  proc = subprocess.run(train_command(workdir, *overrides), cwd=REPO, capture_output=True, text=True, timeout=900,
                        env=subprocess_env())
  assert proc.returncode == returncode, proc.stderr[-5000:]
  return proc


def test_preempted_mid_save_and_resumed_run_is_bit_identical(tmp_path):
  full, split = str(tmp_path / 'full'), str(tmp_path / 'split')
  assert 'final step 6' in launch_train(full).stdout
  # SIGTERM (what SLURM and Cloud TPU send before a preemption) while step 2 is being saved ...
  with open(tmp_path / 'out.txt', 'w+') as out, open(tmp_path / 'err.txt', 'w+') as err:
    proc = subprocess.Popen(train_command(split), cwd=REPO, stdout=out, stderr=err, text=True, env=subprocess_env())
    while proc.poll() is None and not glob.glob(os.path.join(split, 'checkpoints', '2*')):
      time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=900) == train_guard.EXIT_PREEMPTED, (out.seek(0), err.seek(0), err.read()[-5000:])
    out.seek(0)
    stdout = out.read()
  # ... finishes the step it is in, saves it and waits for the commit.
  reached = int(re.search(r'SIGTERM: stopped after step (\d); checkpoint (\S+) is saved and committed', stdout)[1])
  assert 3 <= reached <= 6, stdout
  ckpt = checkpointing.Checkpointer(os.path.join(split, 'checkpoints'), every=1, keep=0)
  assert ckpt.all_steps() == [2, reached]
  ckpt.close()
  # Started again on the same workdir.
  resumed = launch_train(split)
  assert f'at step {reached}' in resumed.stdout and 'final step 6' in resumed.stdout

  step_a, a = _restore(full)
  step_b, b = _restore(split)
  assert step_a == step_b == 6
  assert a['data'] == b['data']  # the same position in the shapes pipeline
  jax.tree.map(np.testing.assert_array_equal, a['state'], b['state'])  # params, opt_state, step
  np.testing.assert_array_equal(a['rng']['rng'], b['rng']['rng'])

  scalars = read_scalars(os.path.join(full, 'tensorboard'))
  for tag in ('train/loss', 'train/lr', 'train/l2_grads', 'train/l2_params', 'train/loss_ce', 'train/loss_mask',
              'train/loss_dice', 'train/loss_pc', 'perf/img_per_s', 'perf/eta_min', 'train/nonfinite_steps'):
    assert sorted(scalars[tag]) == [2, 4, 6], tag  # log_every = 2; the first step only times compilation
  assert list(scalars['perf/compile_and_first_step_s']) == [1]
  schedule = optim.learning_rate_schedule(smoke.get_config('tiny').train)
  np.testing.assert_allclose(scalars['train/lr'][6], float(schedule(5)), rtol=1e-6)


def test_diverging_run_stops_at_the_first_nonfinite_step_and_keeps_its_last_good_checkpoints(tmp_path):
  workdir = str(tmp_path / 'diverged')
  proc = launch_train(workdir, '--config.train.lr=1e6', '--config.train.grad_clip=0', '--config.train.log_every=1',
                      '--config.train.checkpoint_every=1', returncode=train_guard.EXIT_DIVERGED)
  assert 'Traceback' not in proc.stderr
  bad = int(re.search(r'error: training diverged: non-finite loss or gradient norm at step (\d+)', proc.stderr)[1])
  scalars = read_scalars(os.path.join(workdir, 'tensorboard'))  # every step but the first (compilation)
  finite = {s: np.isfinite(scalars['train/loss'][s]) and np.isfinite(scalars['train/l2_grads'][s])
            for s in scalars['train/loss']}
  assert bad >= 2 and not finite[bad] and all(finite[s] for s in range(2, bad)), (bad, finite)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), every=1, keep=0)
  assert ckpt.all_steps() == [bad - 2, bad - 1][-min(bad - 1, 2):]  # keep_checkpoints = 2: the good ones
  ckpt.close()
  assert f'Last good checkpoint: {workdir}/checkpoints/{bad - 1}.' in proc.stderr
  params = evaluate.load_params(workdir)  # checksums verified, every value finite (it refuses others)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize('flag,message', [
    ('--config.train.bogus=1', "error: unknown config field 'bogus' in --config.train.bogus"),
    ('--config.train.lr=abc', "error: flag --config.train.lr=abc: could not convert string to float: 'abc'"),
    ('--config=configs/nope.py', "No such file or directory: 'configs/nope.py'"),
])
def test_flag_errors_are_one_line(tmp_path, flag, message):
  proc = launch_train(str(tmp_path), flag, returncode=2)
  assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize('field,value,message', [
    ('batch_size', 0, r'config.train.batch_size must be > 0, got 0'),
    ('warmup_steps', 7, r'config.train.warmup_steps must be in \[0, num_steps=6\], got 7'),
    ('stop_at_step', 9, r'config.train.stop_at_step must be in \[0, num_steps=6\] \(0 = num_steps\), got 9'),
    ('log_every', -1, r'config.train.log_every must be > 0, got -1'),
])
def test_bad_config_fields(tmp_path, field, value, message):
  config = smoke.get_config('tiny')
  config.train[field] = value
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path))


def test_batch_must_split_over_devices():
  mesh = sharding.make_mesh()
  with pytest.raises(ValueError, match=r'config.train.batch_size=0 must be a positive multiple of the device count'):
    sharding.check_batch_size(0, mesh)
