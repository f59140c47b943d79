"""Drill: SIGTERM to ONE of two training processes; both must save the same step and exit 75.

Two `launch/train.py` processes (configs/smoke.py:tiny, 2000 steps, no periodic checkpoint or
evaluation) coordinated on localhost through `jax.distributed.initialize` (CPU, gloo). Once both
are training, process 1 alone gets SIGTERM, as one host of a pod slice does before maintenance.
Expected: JAX's preemption service tells every process; orbax's `reached_preemption(step)` is true
on all of them at the same step; each saves that step (one checkpoint), waits for the commit and
exits with 75 (EXIT_PREEMPTED). Then both are started again (10 steps): they resume from that step
(checksums verified on both hosts) and finish with exit code 0.

  PYTHONPATH=$PWD JAX_PLATFORMS=cpu python docs/drills/issue11/multihost_preemption.py /tmp/drill_mh
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def start(workdir: str, num_steps: int, tag: str):
  """Two coordinated launch/train.py processes; returns (processes, their log files)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO,
         'XLA_FLAGS': '--xla_cpu_enable_concurrency_optimized_scheduler=false'}
  logs, procs = [], []
  for i in range(2):
    logs.append(open(os.path.join(os.path.dirname(workdir.rstrip('/')) or '.', f'drill_mh_{tag}{i}.log'), 'w+'))
    procs.append(subprocess.Popen(
        [sys.executable, 'launch/train.py', '--config=configs/smoke.py:tiny', f'--workdir={workdir}',
         f'--config.train.num_steps={num_steps}', '--config.train.checkpoint_every=100000',
         '--config.train.eval_every=100000', '--config.train.log_every=1',
         f'--config.train.coordinator_address=127.0.0.1:{port}', '--config.train.num_processes=2',
         f'--config.train.process_id={i}'],
        cwd=REPO, env=env, stdout=logs[i], stderr=subprocess.STDOUT, text=True))
  return procs, logs


def main(workdir: str) -> None:
  procs, logs = start(workdir, 2000, '')
  deadline = time.time() + 1200
  while time.time() < deadline and all(p.poll() is None for p in procs):
    logs[0].seek(0)
    done = [int(m) for m in re.findall(r'\| *(\d+)/2000', logs[0].read())]
    if done and max(done) >= 5:
      break
    time.sleep(0.5)
  print(f'process 0 is at step {max(done) if done else "?"}: SIGTERM to process 1 only', flush=True)
  procs[1].send_signal(signal.SIGTERM)
  codes = [p.wait(timeout=900) for p in procs]
  for i, log in enumerate(logs):
    log.seek(0)
    text = log.read()
    stopped = re.findall(r'([^\n]*: stopped after step \d+; checkpoint \S+ is saved and committed)', text)
    print(f'process {i}: exit code {codes[i]}; {stopped[-1] if stopped else text[-1500:]}')
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
  print(f'checkpoints: {steps}')
  ok = codes == [75, 75] and len(steps) == 1
  print('OK: both processes saved the same step and exited 75' if ok else 'UNEXPECTED')
  if not ok:
    sys.exit(1)
  procs, logs = start(workdir, 10, 'resume')
  codes = [p.wait(timeout=900) for p in procs]
  for i, log in enumerate(logs):
    log.seek(0)
    text = log.read()
    resumed = re.findall(r'Resumed from \S+ at step \d+', text)
    final = re.findall(r'final step \d+[^\n]*', text)
    if i == 0:  # the main process prints
      print(f'rerun, process 0: {resumed[-1] if resumed else "NOT resumed"}; {final[-1][:40] if final else text[-1500:]}')
    print(f'rerun, process {i}: exit code {codes[i]}')
  logs[0].seek(0)
  after = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
  print(f'checkpoints: {after}')
  ok = codes == [0, 0] and f'at step {steps[0]}' in logs[0].read() and after[-1] == 10
  print('OK: both resumed from it and finished' if ok else 'UNEXPECTED')
  sys.exit(0 if ok else 1)


if __name__ == '__main__':
  main(sys.argv[1])
