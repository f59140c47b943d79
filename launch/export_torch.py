r"""Exports a trained OVSNet checkpoint to PyTorch weights in bytedance/fc-clip's ``FCCLIP`` naming.

  python launch/export_torch.py --config=configs/ovsnet_base.py --checkpoint=WORKDIR \
      --out=exported/ovsnet_base.safetensors --clip=CLIP_DIR
  # .pth instead of .safetensors: torch.save of a plain {key: tensor} dict; --overwrite replaces.

--checkpoint is a training workdir, its `checkpoints/` folder or one `checkpoints/<step>` folder (the
latest step is used). --clip (default: config.clip_checkpoint) adds the CLIP text tower, which
FCCLIP's `backbone.clip_model` holds but OVSNet's params do not; without it the text-tower keys are
left out (FCCLIP's detectron2 checkpointer then keeps the text tower open_clip loaded). Next to the
weights, `<out stem>.json` records the OVSNet hyper-parameters (GFA lambda / omega / norm, fusion,
ensemble), the source checkpoint and step, and every key with its shape. Both files are written to
temporary names and renamed at the end.
"""
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

# pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax import cli
from ovsnet_jax.convert import export_torch

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_CHECKPOINT = flags.DEFINE_string('checkpoint', None,
                                  'Training workdir, its checkpoints/ or a checkpoints/<step> folder.')
_OUT = flags.DEFINE_string('out', 'model.safetensors', 'Output weights: *.safetensors (default) or *.pth / *.pt.')
_CLIP = flags.DEFINE_string('clip', '', "Converted CLIP directory for the text tower; '' -> config.clip_checkpoint "
                            "(none: no text tower).")
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace existing output files.')
flags.mark_flags_as_required(['config', 'checkpoint'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  try:
    weights, sidecar = export_torch.export_checkpoint(
        config, _CHECKPOINT.value, _OUT.value, clip_dir=_CLIP.value or config.clip_checkpoint,
        overwrite=_OVERWRITE.value)
  except (FileExistsError, ValueError) as e:  # an existing output, a bad checkpoint/config: one line
    raise cli.UserError(f'export_torch: {e}') from e
  print(f'wrote {weights}\nwrote {sidecar}', flush=True)


if __name__ == '__main__':
  cli.run(main)
