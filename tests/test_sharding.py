"""Data parallelism: the real tiny OVSNet train step on 1 device and on 8 simulated CPU devices.

Each run is a subprocess (`python tests/test_sharding.py worker OUT.npz`, XLA flags set before JAX
starts) that trains the `configs/smoke.py:tiny` OVSNet on one fixed global batch of the shapes
pipeline: loss and gradients of step 0, then three train steps. Both runs must agree.
tests/test_multiprocess.py reuses the worker across two processes.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import launcher_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 3
# 8 devices sum per-device partial gradients in another order. Measured (CPU, float32): loss
# 2e-7 relative, gradients 4.8e-7 of the largest gradient entry, parameters 1.1e-6 after 3 steps.
LOSS_RTOL, GRAD_TOL, PARAM_ATOL = 1e-5, 1e-5, 2e-5
# XLA flags of every worker. On a 2-core machine the 8 device threads of one program can wait far
# longer than XLA:CPU's default 40 s for each other at a collective, and XLA then aborts the process
# ("Termination timeout ... Expected 8 threads to join the rendezvous"; seen in CI): the limit is
# raised. XLA:CPU's concurrency-optimized scheduler lets independent all-reduces of one program run
# in an order that can differ between processes, and gloo then aborts ("collective mismatch"; less
# often with it off: tests/test_multiprocess.py GLOO_ORDER_RACE). The single-device reference runs of this file and of
# tests/test_multiprocess.py use the same flags, so the second one hits the compilation cache.
WORKER_FLAGS = ('--xla_cpu_enable_concurrency_optimized_scheduler=false '
                '--xla_cpu_collective_call_terminate_timeout_seconds=1200 '
                '--xla_cpu_collective_call_warn_stuck_timeout_seconds=600')


def device_flags(n: int) -> dict:
  """Worker environment for `n` simulated CPU devices per process."""
  return {'XLA_FLAGS': f'--xla_force_host_platform_device_count={n} {WORKER_FLAGS}'}


def global_host_batch(config) -> dict:
  """The first global batch of the shapes training pipeline (numpy, CONTRACTS.md host layout)."""
  from ovsnet_jax import train
  from ovsnet_jax.input import pipeline
  reader = train._reader(config, 'shapes', 'train', semantic=False)
  ds = pipeline.train_dataset(reader, global_batch_size=config.train.batch_size, crop_size=config.data.crop_size,
                              scale_range=tuple(config.data.scale_range), max_masks=config.data.max_masks,
                              seed=config.seed, process_index=0, process_count=1)
  return next(iter(ds))


def run_worker(out_path: str) -> dict:
  """Loss/grads at step 0 and NUM_STEPS train steps on all (global) devices; process 0 writes."""
  import jax
  from configs import smoke
  from ovsnet_jax import evaluate, sharding, train
  from ovsnet_jax.input import pipeline
  from ovsnet_jax.models import ovsnet

  config = smoke.get_config('tiny')
  mesh = sharding.make_mesh()
  rep = sharding.replicated(mesh)
  _, clip_params = train.load_clip(config)
  text = train.text_classifier(config, clip_params, cache_dir='')(
      evaluate.dataset_vocabulary(config, 'shapes', train._reader(config, 'shapes', 'train', False))[0])
  text = jax.device_put(text, rep)
  model = ovsnet.build_model(config)
  init_fn = lambda: train.create_train_state(ovsnet.init_params(config, jax.random.PRNGKey(0), clip_params), config)
  state_sh = sharding.state_shardings(jax.eval_shape(init_fn), mesh, config.train.shard_optimizer_state)
  # Every program is finished before the next one starts: with several processes on CPU, gloo runs
  # the collectives of programs that are in flight at once in an order that can differ between
  # processes ("distributed collective mismatch").
  state = jax.block_until_ready(jax.jit(init_fn, out_shardings=state_sh)())
  rng = jax.random.PRNGKey(1)

  host = global_host_batch(config)
  n = sharding.check_batch_size(config.train.batch_size, mesh)
  index = jax.process_index()
  batch = pipeline.to_device_batch({k: v[index * n:(index + 1) * n] for k, v in host.items()}, mesh)
  batch, text = jax.block_until_ready((batch, text))

  def grads_fn(state, batch, rng, text):
    trainable, frozen = train.split_frozen(state.params)
    loss_fn = lambda p: train.loss_and_metrics({**p, **frozen}, batch, jax.random.fold_in(rng, 0), model=model,
                                               text=text, cfg=config)[0]
    return jax.value_and_grad(loss_fn)(trainable)

  loss0, grads = jax.jit(grads_fn, out_shardings=rep)(state, batch, rng, text)
  jax.block_until_ready((loss0, grads))
  step = sharding.jit_train_step(train.make_step_fn(model, config), state_sh, mesh)
  losses = []
  for _ in range(NUM_STEPS):
    state, metrics = jax.block_until_ready(step(state, batch, rng, text))
    losses.append(float(metrics['loss']))
  flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(jax.device_get(x))
                       for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  params = jax.device_get(jax.jit(lambda p: p, out_shardings=rep)(state.params))
  out = {'loss0': float(loss0), 'losses': np.asarray(losses), 'devices': jax.device_count(),
         **{'grad' + k: v for k, v in flat(grads).items()}, **{'param' + k: v for k, v in flat(params).items()}}
  if index == 0:
    np.savez(out_path, **out)
  return out


def run_subprocess(out_path: str, env: dict, *args: str) -> subprocess.Popen:
  """Starts the worker (tests/launcher_env.py: CPU, the shared compilation cache) with extra environment `env`.

  Default code generation: its runs are compared to 1e-5 across different programs (launcher_env).
  """
  env = dict(env)
  env = launcher_env.launcher_env(env.pop('XLA_FLAGS', ''), fast_compile=False) | env
  return subprocess.Popen([sys.executable, __file__, 'worker', out_path, *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: int) -> tuple:
  """(returncode, output) of the worker; killed (and said so in the output) after `timeout` s."""
  try:
    output, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    output = proc.communicate()[0] + f'\n[worker timed out after {timeout}s]'
  return proc.returncode, output


def wait_ok(proc: subprocess.Popen, timeout: int = 600) -> None:
  code, output = finish(proc, timeout)
  assert code == 0, output[-5000:]


def assert_same_run(a: dict, b: dict) -> None:
  """Same step-0 loss and gradients, same losses along the steps, same parameters after them."""
  np.testing.assert_allclose(a['loss0'], b['loss0'], rtol=LOSS_RTOL)
  np.testing.assert_allclose(a['losses'], b['losses'], rtol=LOSS_RTOL)
  grads = sorted(k for k in a if k.startswith('grad'))
  assert grads and grads == sorted(k for k in b if k.startswith('grad'))
  scale = max(np.abs(a[k]).max() for k in grads)  # some leaves (key biases) are exactly 0 + noise
  for k in grads:
    np.testing.assert_allclose(a[k], b[k], rtol=0, atol=GRAD_TOL * scale, err_msg=k)
  for k in (k for k in a if k.startswith('param')):
    np.testing.assert_allclose(a[k], b[k], rtol=0, atol=PARAM_ATOL, err_msg=k)


@pytest.mark.parametrize('shape,spec', [
    ((256, 64), ('data',)),  # largest divisible axis first
    ((3, 3, 64, 256), (None, None, None, 'data')),
    ((100, 30), ()),  # no axis divisible by 8: replicated
    ((16,), ()),  # small arrays stay replicated
    ((), ()),
])
def test_zero1_spec_splits_the_largest_divisible_axis(shape, spec):
  from jax.sharding import PartitionSpec as P
  from ovsnet_jax import sharding
  assert sharding._zero1_spec(shape, 8) == P(*spec)
  assert sharding._zero1_spec(shape, 1) == P()


def test_one_device_and_eight_devices_agree(tmp_path):
  one, eight = str(tmp_path / 'one.npz'), str(tmp_path / 'eight.npz')
  wait_ok(run_subprocess(one, device_flags(1)), timeout=1200)
  wait_ok(run_subprocess(eight, device_flags(8)), timeout=1200)
  a, b = dict(np.load(one)), dict(np.load(eight))
  assert int(a['devices']) == 1 and int(b['devices']) == 8
  assert np.all(np.isfinite(a['losses']))
  assert_same_run(a, b)


if __name__ == '__main__':
  if sys.argv[1] == 'worker':
    if len(sys.argv) > 3:  # multi-process: coordinator address, process count, process index
      import ml_collections
      from ovsnet_jax import sharding
      assert sharding.initialize_distributed(ml_collections.ConfigDict(dict(
          coordinator_address=sys.argv[3], num_processes=int(sys.argv[4]), process_id=int(sys.argv[5]))))
    run_worker(sys.argv[2])
