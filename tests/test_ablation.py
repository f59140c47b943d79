"""launch/ablate.py: a shortened run (two tiny rows, one seed) writes a well-formed table and plot, and
a rerun keeps the finished runs; row selection and shared runs between rows.

The two rows (Table 3's "+GFA +PC" and Table 4b's "gamma = 2") are one config, so one tiny training
run (the config of `tests/test_train.py`'s launcher runs: its step compiles once in the shared cache).
"""
import glob
import json
import os
import re
import subprocess
import sys


import pytest

import launcher_env
from configs import smoke
from ovsnet_jax import ablation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env() -> dict:
  return launcher_env.launcher_env()

CELL = re.compile(r'^(\d+\.\d) ± (\d+\.\d)$')


def test_shortened_ablate_writes_a_well_formed_table_and_resumes(tmp_path):
  out = str(tmp_path / 'ablate')
  args = ['--rows=t3_both,t4b_gamma2', '--seeds=1', '--steps=0', '--config.eval.max_images=8']
  proc = subprocess.run([sys.executable, 'launch/ablate.py', f'--out={out}', '--config=configs/smoke.py:tiny', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=900, env=subprocess_env())
  assert proc.returncode == 0, proc.stderr[-5000:]
  with open(os.path.join(out, 'ablation.md')) as f:
    lines = f.read().strip().split('\n')
  assert len(lines) == 5, lines  # header, separator, two rows, the chance line
  cells = [[c.strip() for c in line.strip('|').split('|')] for line in lines]
  assert all(len(c) == len(cells[0]) == 10 for c in cells), cells
  assert cells[0][:6] == ['table', 'row', 'seeds', 'mIoU-seen', 'mIoU-unseen', 'hIoU']
  assert [c[1] for c in cells[2:4]] == [ablation.ROWS['t3_both'].label, ablation.ROWS['t4b_gamma2'].label]
  assert cells[2][2:] == cells[3][2:]  # one shared run
  for row in cells[2:4]:
    assert row[2] == '1'
    for cell in row[3:6]:
      m = CELL.match(cell)
      assert m and 0 <= float(m.group(1)) <= 100 and float(m.group(2)) == 0.0, cell  # one seed: std 0
  bound, own = (re.match(r'^(\d+\.\d\d) ± 0\.00$', cells[2][i]) for i in (6, 8))  # GFA diagnostics
  assert bound and float(bound.group(1)) > 0 and own and 0 <= float(own.group(1)) <= 1, cells[2]
  with open(os.path.join(out, 'ablation.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  runs = sorted(glob.glob(os.path.join(out, 'runs', '*', 'seed*.json')))  # one record per (config, seed)
  assert len(runs) == 1
  with open(runs[0]) as f:
    chance = json.load(f)['chance']  # metrics.chance_metrics of the run's evaluation
  assert cells[4][:3] == ['chance', 'random labelling, ground-truth class frequencies', '-'], cells[4]
  assert cells[4][3:6] == [f'{chance[k]:.1f} ± 0.0' for k in ('mIoU-seen', 'mIoU-unseen', 'hIoU')], (cells[4], chance)
  mtimes = [os.path.getmtime(p) for p in runs]

  # The same rows again, in-process: every run is kept (not retrained) and the table is unchanged.
  base = smoke.get_config('tiny')
  base.eval.max_images = 8
  logs = []
  ablation.run(base, ablation.select_rows('t3_both,t4b_gamma2'), 1, out, log=logs.append)
  assert [os.path.getmtime(p) for p in runs] == mtimes
  assert all('kept' in line for line in logs), logs
  with open(os.path.join(out, 'ablation.md')) as f:
    assert f.read().strip().split('\n') == lines


def test_row_selection_and_shared_runs():
  assert [r.name for r in ablation.select_rows('t3')] == ['t3_baseline', 't3_gfa', 't3_pc', 't3_both']
  assert len(ablation.select_rows('t4a,t4a_gfa,readings')) == 7  # duplicates once
  with pytest.raises(ValueError, match=r"--rows: unknown row or group 't5'; expected groups \['all', 't3'"):
    ablation.select_rows('t3,t5')
  with pytest.raises(ValueError, match='--rows: expected at least one row'):
    ablation.select_rows(' , ')
  base = smoke.get_config('tiny')
  key = lambda name: ablation.config_key(ablation.row_config(base, ablation.ROWS[name], steps=50))
  assert key('t3_gfa') == key('t4a_gfa') == key('t4b_pc_off')  # one config, one set of runs
  assert len({key('t3_baseline'), key('t3_gfa'), key('t3_pc'), key('t3_both')}) == 4
  config = ablation.row_config(base, ablation.ROWS['t4b_gamma0.5'], steps=50)
  assert config.train.proxy_calibration.gamma == 0.5 and config.train.num_steps == config.train.eval_every == 50
