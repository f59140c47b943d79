r"""Trains OVSNet; resumes from --workdir when it holds checkpoints.

  python launch/train.py --config=configs/smoke.py --workdir=/tmp/ovsnet_smoke
  python launch/train.py --config=configs/ovsnet_base.py --workdir=DIR \
      --config.data.root=$DETECTRON2_DATASETS --config.clip_checkpoint=CLIP_DIR
  # any field can be overridden: --config.model.gfa.omega=0.5 --config.train.batch_size=16

TensorBoard: `tensorboard --logdir DIR/tensorboard`.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

from ovsnet_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard logs and the text cache go here.')
_CACHE = flags.DEFINE_string('compilation_cache', '', 'Persistent XLA compilation cache directory ("" = off).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every save at INFO: keep the console readable
    logging.set_verbosity(logging.WARNING)
  if _CACHE.value:
    jax.config.update('jax_compilation_cache_dir', _CACHE.value)
  logging.info('Config:\n%s', _CONFIG.value)  # shown with --verbosity=0
  os.makedirs(_WORKDIR.value, exist_ok=True)
  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    ev = {k: round(float(v), 2) for k, v in result['eval'].items() if isinstance(v, (int, float))}
    print(f"final step {result['step']}: loss {result['train'].get('loss', float('nan')):.4f}; eval {ev}", flush=True)


if __name__ == '__main__':
  app.run(main)
