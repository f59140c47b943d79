"""Two processes on localhost through `jax.distributed.initialize` train like one process.

The worker of tests/test_sharding.py runs twice concurrently, coordinated on 127.0.0.1 at a free
port (CPU backend, gloo collectives, one CPU device per process, each process feeding its half of
the global batch); a third, single-process run is the reference. Bounded in time: each worker
has a timeout and is killed when it runs over.
"""
import socket

import numpy as np

import test_sharding as worker


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_reach_the_single_process_loss(tmp_path):
  single, multi = str(tmp_path / 'single.npz'), str(tmp_path / 'multi.npz')
  flags = worker.device_flags(1)  # see worker.WORKER_FLAGS
  worker.wait_ok(worker.run_subprocess(single, flags), timeout=1200)
  address = f'127.0.0.1:{free_port()}'
  procs = [worker.run_subprocess(multi, flags, address, '2', str(i)) for i in range(2)]
  try:
    for p in procs:
      worker.wait_ok(p, timeout=1200)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  a, b = dict(np.load(single)), dict(np.load(multi))
  assert int(a['devices']) == 1 and int(b['devices']) == 2
  worker.assert_same_run(a, b)
