"""The paper's ablation tables (Tables 3 and 4, GFA readings, ensemble) on the miniature open world.

Each row is a set of config overrides on a base experiment config (``configs/smoke.py``), trained
and evaluated over N seeds with ``train.train_and_evaluate``. Every (config, seed) run writes one
JSON file, atomically, under ``<out>/runs/<config hash>/seed<k>.json``; a rerun keeps the finished
ones (resumable; rows that share a config, e.g. Table 3's "+GFA" and Table 4a's "GFA", share runs).
The summary is a markdown table (mean +- std over seeds of mIoU-seen, mIoU-unseen, hIoU and the GFA
diagnostics of the last logged training step) and a bar plot PNG.

  python launch/ablate.py --out=/tmp/ablate --rows=t3,readings --seeds=3
"""
import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import resource
import shutil
import time

import numpy as np

from ovsnet_jax import atomic_io


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  table: str
  label: str
  overrides: tuple  # ((dotted config path, value), ...)


def _rows() -> list[Row]:
  pc, gfa = 'train.proxy_calibration', 'model.gfa'
  off, on = ((f'{pc}.enabled', False),), ((f'{pc}.enabled', True),)
  none, fused = (('model.fusion', 'none'),), (('model.fusion', 'gfa'),)
  rows = [Row('t3_baseline', 'Table 3', 'baseline (no GFA, no PC)', none + off),
          Row('t3_gfa', 'Table 3', '+GFA', fused + off),
          Row('t3_pc', 'Table 3', '+PC', none + on),
          Row('t3_both', 'Table 3', '+GFA +PC', fused + on),
          Row('t4a_self_attn', 'Table 4a', 'self-attention fusion', (('model.fusion', 'self_attn'),) + off),
          Row('t4a_cross_attn', 'Table 4a', 'cross-attention fusion', (('model.fusion', 'cross_attn'),) + off),
          Row('t4a_gfa', 'Table 4a', 'GFA', fused + off)]
  for gamma in (0.5, 1.0, 2.0):
    rows.append(Row(f't4b_gamma{gamma:g}', 'Table 4b', f'PC gamma = {gamma:g}', fused + on + ((f'{pc}.gamma', gamma),)))
  rows.append(Row('t4b_pc_off', 'Table 4b', 'PC off', fused + off))
  for reading in ('query', 'channel', 'per_query', 'random_walk'):
    rows.append(Row(f'gfa_{reading}', 'GFA readings', f"affinity '{reading}' (+PC)",
                    fused + on + ((f'{gfa}.affinity', reading),)))
  for enabled in (True, False):
    rows.append(Row(f'ensemble_{"on" if enabled else "off"}', 'Ensemble with GFA',
                    f'FC-CLIP ensemble {"on" if enabled else "off"} (+GFA +PC)',
                    fused + on + (('model.ensemble.enabled', enabled),)))
  return rows


ROWS = {r.name: r for r in _rows()}
GROUPS = {'t3': 'Table 3', 't4a': 'Table 4a', 't4b': 'Table 4b', 'readings': 'GFA readings',
          'ensemble': 'Ensemble with GFA'}
METRICS = ('mIoU-seen', 'mIoU-unseen', 'hIoU')
GFA_METRICS = ('gfa/spectral_bound', 'gfa/fused_cosine', 'gfa/input_cosine', 'gfa/own_nearest')


def select_rows(spec: str) -> list[Row]:
  """Rows named by ``spec``: comma-separated row names or groups (t3, t4a, t4b, readings, ensemble, all)."""
  names = []
  for item in (s.strip() for s in spec.split(',') if s.strip()):
    if item == 'all':
      names += list(ROWS)
    elif item in GROUPS:
      names += [r.name for r in ROWS.values() if r.table == GROUPS[item]]
    elif item in ROWS:
      names.append(item)
    else:
      raise ValueError(f'--rows: unknown row or group {item!r}; expected groups {["all", *GROUPS]} or rows '
                       f'{list(ROWS)}')
  if not names:
    raise ValueError('--rows: expected at least one row or group, got an empty list')
  return [ROWS[n] for n in dict.fromkeys(names)]


def row_config(base, row: Row, steps: int = 0):
  """The base config with the row's overrides and, if ``steps``, a ``steps``-step schedule that
  evaluates (and checkpoints) once at its end."""
  config = copy.deepcopy(base)
  for path, value in row.overrides:
    *parents, leaf = path.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  t = config.train
  if steps:
    t.num_steps, t.warmup_steps = steps, min(t.warmup_steps, steps // 10)
  t.eval_every = t.checkpoint_every = t.num_steps
  t.stop_at_step = 0
  return config


def config_key(config) -> str:
  """A hash of everything in the config but the seed: runs of equal configs are shared across rows."""
  d = config.to_dict()
  d.pop('seed', None)
  return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_path(out: str, config, seed: int) -> str:
  return os.path.join(out, 'runs', config_key(config), f'seed{seed}.json')


def _cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def run_one(config, row: Row, seed: int, out: str) -> dict:
  """Trains and evaluates one (config, seed) unless its JSON exists; returns the record."""
  from ovsnet_jax import train  # pylint: disable=g-import-not-at-top
  path = run_path(out, config, seed)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  config = copy.deepcopy(config)
  config.seed = seed
  if not config.text.cache_dir:
    config.text.cache_dir = os.path.join(out, 'text_cache')
  workdir = os.path.join(os.path.dirname(path), f'seed{seed}')
  tick, cpu = time.perf_counter(), _cpu_s()
  result = train.train_and_evaluate(config, workdir)
  record = {'row': row.name, 'seed': seed, 'config_key': config_key(config), 'overrides': dict(row.overrides),
            'step': result['step'], 'wall_s': round(time.perf_counter() - tick, 1),
            'cpu_s': round(_cpu_s() - cpu, 1),  # all threads: an idle N-core machine needs >= cpu_s / N wall
            'eval': {k: float(v) for k, v in result['eval'].items() if isinstance(v, (int, float))},
            'chance': {k: float(v) for k, v in result['eval'].get('chance', {}).items()},
            'train': result['train'], 'gfa_warning': result.get('gfa_warning')}
  atomic_io.write_json(record, path)
  shutil.rmtree(os.path.join(workdir, 'checkpoints'), ignore_errors=True)  # the record is what is kept
  return record


def _stat(values: list) -> tuple[float, float]:
  v = [x for x in values if x is not None and not math.isnan(x)]
  if not v:
    return float('nan'), float('nan')
  return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def summarize(rows: list[Row], records: dict) -> list[dict]:
  """Per row: mean and std over seeds of METRICS and GFA_METRICS, seeds done, GFA warnings."""
  table = []
  for row in rows:
    recs = records.get(row.name, [])
    entry = {'row': row, 'seeds': len(recs), 'warnings': sum(bool(r.get('gfa_warning')) for r in recs)}
    for k in METRICS:
      entry[k] = _stat([r['eval'].get(k) for r in recs])
    for k in GFA_METRICS:
      entry[k] = _stat([r['train'].get(k) for r in recs])
    entry['chance'] = {k: _stat([r.get('chance', {}).get(k) for r in recs]) for k in METRICS}
    table.append(entry)
  return table


def _fmt(ms: tuple[float, float], digits: int = 1) -> str:
  m, s = ms
  return 'n/a' if math.isnan(m) else f'{m:.{digits}f} ± {s:.{digits}f}'


def markdown(table: list[dict]) -> str:
  """The summary as a markdown table (one header, one line per row)."""
  head = ('| table | row | seeds | mIoU-seen | mIoU-unseen | hIoU | GFA bound | fused cos (F_C^0 cos) '
          '| own-nearest | GFA warnings |')
  lines = [head, '|' + ' --- |' * (head.count('|') - 1)]
  for e in table:
    r = e['row']
    gfa = e['gfa/spectral_bound'][0]
    cos = 'n/a' if math.isnan(gfa) else f"{_fmt(e['gfa/fused_cosine'], 2)} ({e['gfa/input_cosine'][0]:.2f})"
    lines.append(f"| {r.table} | {r.label} | {e['seeds']} | {_fmt(e['mIoU-seen'])} | {_fmt(e['mIoU-unseen'])} | "
                 f"{_fmt(e['hIoU'])} | {_fmt(e['gfa/spectral_bound'], 2)} | {cos} | "
                 f"{_fmt(e['gfa/own_nearest'], 2)} | {e['warnings']} |")
  # Every row is evaluated on the same images: one chance line (metrics.chance_metrics), from the first row.
  chance = next((e['chance'] for e in table if not math.isnan(e['chance']['hIoU'][0])), None)
  if chance:
    lines.append(f"| chance | random labelling, ground-truth class frequencies | - | {_fmt(chance['mIoU-seen'])} | "
                 f"{_fmt(chance['mIoU-unseen'])} | {_fmt(chance['hIoU'])} | n/a | n/a | n/a | - |")
  return '\n'.join(lines) + '\n'


def bar_plot(table: list[dict]) -> bytes:
  """PNG bytes: grouped bars (mIoU-seen, mIoU-unseen, hIoU) per row, std as error bars, and each
  metric's chance level (the markdown table's last line) as a dashed line in its bar colour."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  n = len(table)
  fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 2), 4.5))
  x = np.arange(n)
  width = 0.27
  for i, k in enumerate(METRICS):
    means = [0.0 if math.isnan(e[k][0]) else e[k][0] for e in table]
    stds = [0.0 if math.isnan(e[k][1]) else e[k][1] for e in table]
    bars = ax.bar(x + (i - 1) * width, means, width, yerr=stds, capsize=2, label=k)
    chance = next((e['chance'][k][0] for e in table if not math.isnan(e['chance'][k][0])), None)
    if chance is not None:
      ax.axhline(chance, color=bars.patches[0].get_facecolor(), linestyle='--', linewidth=1,
                 label=f'{k}, chance')
  ax.set_xticks(x, [e['row'].name for e in table], rotation=35, ha='right', fontsize=8)
  ax.set_ylabel('IoU (%)')
  ax.set_title('OVSNet ablations, miniature open world (mean ± std over seeds)', fontsize=9)
  top = max([e[k][0] + (0.0 if math.isnan(e[k][1]) else e[k][1]) for e in table for k in METRICS
             if not math.isnan(e[k][0])] or [1.0])
  ax.set_ylim(0, 1.4 * top)  # headroom for the legend
  ax.legend(fontsize=7, ncol=2, loc='upper left')
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=110)
  plt.close(fig)
  return buf.getvalue()


def run(base, rows: list[Row], seeds: int, out: str, steps: int = 0, first_seed: int = 0, log=print,
        train: bool = True) -> list[dict]:
  """Runs every (row, seed) not yet finished (only reads them if not ``train``), then writes
  ``<out>/ablation.md`` and ``ablation.png``."""
  if seeds < 1:
    raise ValueError(f'--seeds: expected at least 1, got {seeds}')
  records = {}
  for seed in range(first_seed, first_seed + seeds):  # seed-major: a short budget still covers every row
    for row in rows:
      config = row_config(base, row, steps)
      done = os.path.exists(run_path(out, config, seed))
      log(f"[ablate] {row.name} seed {seed}: {'kept' if done else 'running' if train else 'missing'} "
          f"({config_key(config)})")
      if not done and not train:
        continue
      rec = run_one(config, row, seed, out)
      records.setdefault(row.name, []).append(rec)
      if not done:
        log(f"[ablate] {row.name} seed {seed}: {rec['wall_s']:.0f} s wall, {rec['cpu_s']:.0f} s CPU, eval "
            + ', '.join(f'{k} {rec["eval"].get(k, float("nan")):.2f}' for k in METRICS))
      atomic_io.write_text(markdown(summarize(rows, records)), os.path.join(out, 'ablation.md'))
  table = summarize(rows, records)
  atomic_io.write_text(markdown(table), os.path.join(out, 'ablation.md'))
  atomic_io.write_bytes(bar_plot(table), os.path.join(out, 'ablation.png'))
  return table
