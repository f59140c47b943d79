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


# gloo's abort when the two processes run two independent collectives of one program in different
# orders. XLA:CPU may run independent collective thunks concurrently; accelerator backends order
# them. Seen about 1 run in 3 under load with the concurrency-optimized scheduler on, and once (of
# 4 runs) with it off while the machine ran three CPU-bound jobs. Only this abort is retried, once.
GLOO_ORDER_RACE = 'Is there a distributed collective mismatch in your code?'


def run_two_processes(out_path: str, flags: dict) -> list:
  """Both workers to the end; returns [(returncode, output)] (killed at the time limit)."""
  address = f'127.0.0.1:{free_port()}'
  procs = [worker.run_subprocess(out_path, flags, address, '2', str(i)) for i in range(2)]
  try:
    results = [worker.finish(p, timeout=1200) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return results


def test_two_processes_reach_the_single_process_loss(tmp_path):
  single, multi = str(tmp_path / 'single.npz'), str(tmp_path / 'multi.npz')
  worker.wait_ok(worker.run_subprocess(single, worker.device_flags(1)), timeout=1200)
  results = run_two_processes(multi, worker.device_flags(1))
  if any(code != 0 and GLOO_ORDER_RACE in out for code, out in results):
    print('gloo collective-order race (see GLOO_ORDER_RACE): running the two processes once more')
    results = run_two_processes(multi, worker.device_flags(1))
  for code, output in results:
    assert code == 0, output[-5000:]
  a, b = dict(np.load(single)), dict(np.load(multi))
  assert int(a['devices']) == 1 and int(b['devices']) == 2
  worker.assert_same_run(a, b)
