r"""AOT-compiles the train step or the inference forward of a config for a TPU topology (no TPU needed).

  python launch/compile_for.py --config=configs/ovsnet_base.py --topology=v5e:2x2
  python launch/compile_for.py --config=configs/ovsnet_large.py --topology=v4:2x2x1 --what=forward
  python launch/compile_for.py --config=configs/smoke.py:tiny --topology=local \
      --config.train.batch_size=2

Prints per device: argument, temporary and total memory against the chip's HBM, FLOPs, bytes
accessed, generated-code size, compile time and the roofline bound on the step time; exits with
`error: ... does not fit` (code 2) when the program needs more than the chip's HBM. The global
batch is `config.train.batch_size` (split over the topology's chips), the training image
`config.data.crop_size`^2 with `config.data.max_masks` targets; the forward runs on
`config.data.eval_max_size`^2. Topologies: v4:AxBxC, v5e:AxB, v5p:AxBxC, v6e:AxB (libtpu), local.

`--peak_memory` also says where the temporary memory goes: XLA dumps the compiled module
(`--xla_dump_to`, into `--dump_dir` or a temporary folder removed afterwards) and
`ovsnet_jax/peak_memory.py` lists the buffers live at the peak, by name scope and largest first.
The dump of a full-size train step takes a few GB of disk.
"""
import os
import shutil
import sys
import tempfile

from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

from ovsnet_jax import aot  # pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_TOPOLOGY = flags.DEFINE_string('topology', 'v5e:2x2', "TPU topology ('v5e:2x2', 'v4:2x2x1', ...) or 'local'.")
_WHAT = flags.DEFINE_enum('what', 'train', ['train', 'forward', 'both'], 'Which program(s) to compile.')
_CLASSES = flags.DEFINE_integer('num_classes', 133, 'Vocabulary size K of the text classifier.')
_SYNONYMS = flags.DEFINE_integer('num_synonyms', 1, 'Synonyms per class S of the text classifier.')
_PEAK = flags.DEFINE_bool('peak_memory', False, 'Report the buffers live at the peak of the temporary memory.')
_DUMP_DIR = flags.DEFINE_string('dump_dir', '', "XLA dump folder for --peak_memory ('': a temporary one, removed).")
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logs()
  dump_dir = ''
  if _PEAK.value:  # before any backend starts: XLA reads its flags once
    dump_dir = _DUMP_DIR.value or tempfile.mkdtemp(prefix='ovsnet_xla_dump_')
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump_dir}".strip()
  try:
    for what in (('train', 'forward') if _WHAT.value == 'both' else (_WHAT.value,)):
      try:
        aot.compile_for(_CONFIG.value, _TOPOLOGY.value, what, num_classes=_CLASSES.value,
                        num_synonyms=_SYNONYMS.value, log=lambda s: print(s, flush=True), dump_dir=dump_dir)
      except ValueError as e:
        raise cli.UserError(str(e)) from None
  finally:
    if dump_dir and not _DUMP_DIR.value:
      shutil.rmtree(dump_dir, ignore_errors=True)


if __name__ == '__main__':
  cli.run(main)
