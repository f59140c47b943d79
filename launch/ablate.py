r"""Runs the paper's ablation tables on the miniature open world, each row over N seeds; resumable.

  python launch/ablate.py --out=/tmp/ablate                       # every row, 3 seeds
  python launch/ablate.py --out=/tmp/ablate --rows=t3,readings --seeds=3
  python launch/ablate.py --out=/tmp/ablate --rows=t3_baseline,t3_gfa --config=configs/smoke.py:tiny --seeds=1

Rows (``--rows``, comma-separated names or groups): t3 (baseline, +GFA, +PC, +GFA +PC), t4a
(self-attention, cross-attention, GFA), t4b (PC gamma 0.5, 1, 2, PC off), readings (every
model.gfa.affinity), ensemble (FC-CLIP's ensemble on/off with GFA), all. Each (config, seed) run
leaves ``<out>/runs/<hash>/seed<k>.json``; rerunning keeps those. Writes ``<out>/ablation.md`` (mean
+- std of mIoU-seen, mIoU-unseen, hIoU and GFA's diagnostics) and ``<out>/ablation.png``.
``--notrain`` tabulates the finished runs only. ``--steps`` shortens every run's schedule (0: the config's own); the base config takes overrides
(``--config.model.gfa.omega=0.3``) that apply to every row.
"""
import os
import sys

from absl import flags
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

from ovsnet_jax import ablation  # pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/smoke.py', 'Base experiment config file.',
                                          lock_config=False)
_OUT = flags.DEFINE_string('out', None, 'Output folder: runs/, ablation.md, ablation.png.')
_ROWS = flags.DEFINE_string('rows', 'all', 'Comma-separated rows or groups (t3, t4a, t4b, readings, ensemble, all).')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per row (config.seed, config.seed + 1, ...).')
_STEPS = flags.DEFINE_integer('steps', 300, "Training steps per run (0: the config's num_steps).")
_TRAIN = flags.DEFINE_bool('train', True, 'Train missing runs; --notrain only tabulates the finished ones.')
_CACHE = flags.DEFINE_string('compilation_cache', '', 'Persistent XLA compilation cache ("" = <out>/xla_cache).')
flags.mark_flags_as_required(['out'])


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logs()
  try:
    rows = ablation.select_rows(_ROWS.value)
    if _SEEDS.value < 1 or _STEPS.value < 0:
      raise ValueError(f'--seeds must be >= 1 and --steps >= 0, got {_SEEDS.value} and {_STEPS.value}')
  except ValueError as e:
    raise cli.UserError(str(e)) from e
  jax.config.update('jax_compilation_cache_dir', _CACHE.value or os.path.join(_OUT.value, 'xla_cache'))
  base = _CONFIG.value
  ablation.run(base, rows, _SEEDS.value, _OUT.value, steps=_STEPS.value, first_seed=base.seed, train=_TRAIN.value)
  with open(os.path.join(_OUT.value, 'ablation.md')) as f:
    print(f.read(), flush=True)
  print(f"wrote {os.path.join(_OUT.value, 'ablation.md')} and {os.path.join(_OUT.value, 'ablation.png')}")


if __name__ == '__main__':
  cli.run(main)
