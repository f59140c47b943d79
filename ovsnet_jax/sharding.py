"""Data parallelism: the device mesh, shardings for the batch and the train state, multi-host set-up.

One mesh axis, `data`. Batches are split along their leading axis over it
(`NamedSharding(mesh, P('data'))`); parameters are replicated; the optimizer state is replicated
or, with `shard_optimizer_state`, split over `data` along its largest divisible axis (ZeRO-1: XLA
then reduce-scatters the gradients and all-gathers the updated parameters).
"""
import os
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def initialize_distributed(cfg: ml_collections.ConfigDict) -> bool:
  """Calls `jax.distributed.initialize` for multi-process runs; a no-op on a single host.

  The coordinator comes from `cfg.coordinator_address` or `$JAX_COORDINATOR_ADDRESS`; the process
  count and index from `cfg.num_processes` / `cfg.process_id` or `$JAX_NUM_PROCESSES` /
  `$JAX_PROCESS_ID`. `coordinator_address='auto'` lets JAX detect the cluster (SLURM, Open MPI,
  Cloud TPU, ...). Must run before any other JAX call.

  Args:
    cfg: the `train` config.

  Returns:
    True when `jax.distributed.initialize` was called.
  """
  address = cfg.coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  if not address:
    return False
  if address == 'auto':
    jax.distributed.initialize()
    return True
  num = int(cfg.num_processes or os.environ.get('JAX_NUM_PROCESSES', 0))
  pid = int(cfg.process_id if cfg.process_id >= 0 else os.environ.get('JAX_PROCESS_ID', -1))
  if num <= 0 or not 0 <= pid < num:
    raise ValueError(f'config.train.coordinator_address={address!r} needs config.train.num_processes > 0 and '
                     f'0 <= config.train.process_id < num_processes (or $JAX_NUM_PROCESSES/$JAX_PROCESS_ID), '
                     f'got num_processes={num}, process_id={pid}')
  jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
  return True


def make_mesh(devices: Optional[list] = None) -> Mesh:
  """A 1-D mesh with axis `data` over all (global) devices."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
  """The per-process batch size; raises if the global batch does not split over devices/processes."""
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  if global_batch <= 0 or global_batch % n_dev or global_batch % n_proc:
    raise ValueError(f'config.train.batch_size={global_batch} must be a positive multiple of the device count '
                     f'({n_dev}) and of the process count ({n_proc})')
  return global_batch // n_proc


def _zero1_spec(shape: tuple, n: int) -> P:
  """Split the largest axis divisible by n over `data`; replicate small or indivisible arrays."""
  axes = [i for i, d in enumerate(shape) if d % n == 0 and d >= n]
  if n == 1 or not axes or int(np.prod(shape)) < 1024:
    return P()
  best = max(axes, key=lambda i: shape[i])
  return P(*([None] * best + [DATA_AXIS]))


def state_shardings(abstract_state: Any, mesh: Mesh, shard_optimizer_state: bool = False) -> Any:
  """Shardings for a train state (anything with `params` and `opt_state` fields).

  Args:
    abstract_state: the state or its `jax.eval_shape`.
    mesh: the device mesh.
    shard_optimizer_state: ZeRO-1 sharding of `opt_state` over `data`.

  Returns:
    A tree of `NamedSharding` with the structure of `abstract_state`.
  """
  rep = replicated(mesh)
  shardings = jax.tree.map(lambda _: rep, abstract_state)
  if shard_optimizer_state:
    n = mesh.shape[DATA_AXIS]
    opt = jax.tree.map(lambda x: NamedSharding(mesh, _zero1_spec(tuple(x.shape), n)), abstract_state.opt_state)
    shardings = shardings.replace(opt_state=opt)
  return shardings


def jit_train_step(step_fn: Callable, state_sharding: Any, mesh: Mesh) -> Callable:
  """`step_fn(state, batch, rng, text) -> (state, metrics)` jitted once with shardings and donation.

  The state is donated (updated in place); batch sharded over `data`; rng, text and metrics
  replicated.
  """
  rep = replicated(mesh)
  return jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding(mesh), rep, rep),
                 out_shardings=(state_sharding, rep), donate_argnums=(0,))
