"""launch/benchmark.py: per-mode --help, and the criterion benchmark's figures on a tiny problem."""
import os
import subprocess
import sys

import numpy as np

from ovsnet_jax.benchmarks import criterion as criterion_bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _benchmark(*flags):
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'benchmark.py'), *flags],
                        capture_output=True, text=True, env=env, timeout=300)


def test_mode_help_shows_that_modes_flags():
  peer = _benchmark('--mode=peer', '--help')
  assert peer.returncode == 0 and 'benchmark --mode=peer' in peer.stdout
  assert '--inference_output' in peer.stdout and '--threads' in peer.stdout
  top = _benchmark('--help')
  assert top.returncode == 0 and '--mode' in top.stdout and '--inference_output' not in top.stdout
  missing = _benchmark()
  assert missing.returncode == 2 and '--mode is required' in missing.stderr


def test_criterion_benchmark_budget_keeps_the_loss():
  figures = criterion_bench.run(['--size=32', '--batch=2', '--queries=6', '--classes=4',
                                 '--max_masks=8', '--masks_per_image=3', '--layers=2',
                                 '--num_points=64', '--budgets=0,3', '--steps=1'])
  # Counter-based point draws: a budget that fits samples the same points for the real targets.
  np.testing.assert_allclose(figures['loss_3'], figures['loss_0'], rtol=1e-6)
  assert figures['cpu_s_0'] > 0 and figures['cpu_s_3'] > 0


def test_text_benchmark_trimmed_encoding_equals_full_context():
  from ovsnet_jax.benchmarks import text as text_bench  # pylint: disable=g-import-not-at-top
  figures = text_bench.run(['--vocab=ade150', '--variant=test_tiny', '--fraction=0.02', '--repeats=1',
                            '--chunk=64'])
  # every 50th of ade150's 403 synonyms, 14 VILD templates each
  assert figures['synonyms'] == 403 and figures['timed_prompts'] == 9 * 14
  assert figures['max_abs_diff'] < 1e-5  # the causal mask makes trimming exact
  assert figures['cpu_s_trim'] > 0 and figures['cpu_s_full'] > 0
  bad = _benchmark('--mode=text', '--fraction=0')
  assert bad.returncode == 2 and '--fraction must be in (0, 1]' in bad.stderr
