r"""Trains OVSNet; resumes from --workdir when it holds checkpoints.

  python launch/train.py --config=configs/smoke.py --workdir=/tmp/ovsnet_smoke
  python launch/train.py --config=configs/ovsnet_base.py --workdir=DIR \
      --config.data.root=$DETECTRON2_DATASETS --config.clip_checkpoint=CLIP_DIR
  # any field can be overridden: --config.model.gfa.omega=0.5 --config.train.batch_size=16

TensorBoard: `tensorboard --logdir DIR/tensorboard`.

Exit codes: 0 done; 2 bad input (a config field, a file) or a checkpoint that cannot be written or
restored, one line on stderr; 3 the run diverged (non-finite loss or gradient norm; the error names
the step and the last good checkpoint); 75 stopped by SIGTERM/SIGINT after saving a checkpoint
(run the same command again to resume).
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

from ovsnet_jax import checkpointing  # pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax import train_guard  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard logs and the text cache go here.')
_CACHE = flags.DEFINE_string('compilation_cache', '', 'Persistent XLA compilation cache directory ("" = off).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_logs()  # orbax logs every save at INFO: keep the console readable
  if _CACHE.value:
    jax.config.update('jax_compilation_cache_dir', _CACHE.value)
  logging.info('Config:\n%s', _CONFIG.value)  # shown with --verbosity=0
  try:
    os.makedirs(_WORKDIR.value, exist_ok=True)
  except OSError as e:
    raise cli.UserError(f'--workdir={_WORKDIR.value}: cannot create it: {e.strerror}') from e
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train_guard.Preempted as e:
    print(str(e), flush=True)
    sys.exit(train_guard.EXIT_PREEMPTED)
  except train_guard.Diverged as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(train_guard.EXIT_DIVERGED)
  except (checkpointing.CheckpointError, train.ConfigError) as e:
    raise cli.UserError(str(e)) from e
  if jax.process_index() == 0:
    ev = {k: round(float(v), 2) for k, v in result['eval'].items() if isinstance(v, (int, float))}
    chance = {k: round(float(v), 2) for k, v in result['eval'].get('chance', {}).items()}
    tail = f'; chance (random labelling with the ground-truth class frequencies) {chance}' if chance else ''
    print(f"final step {result['step']}: loss {result['train'].get('loss', float('nan')):.4f}; eval {ev}{tail}",
          flush=True)


if __name__ == '__main__':
  cli.run(main)
