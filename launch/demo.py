r"""Segments one image with any vocabulary and writes a colour overlay PNG with a legend.

  # FC-CLIP's released ConvNeXt-L weights (no config or CLIP download needed; --fusion=gfa: training-free GFA)
  python launch/demo.py --checkpoint=fcclip_cocopan.pth --image=street.jpg --classes=ade150 --out=seg.png
  # an OVSNet training workdir
  python launch/demo.py --config=configs/ovsnet_base.py --clip=CLIP_DIR --checkpoint=WORKDIR \
      --image=street.jpg --classes="car,person|people,road,building|opera house,sky" --out=seg.png

--classes: ',' between classes, '|' between synonyms ("cat," is one class); a single name is a
shipped vocabulary (ade150, coco_panoptic_133, ...), a path a class-name file. Without --checkpoint
the decoder is random (pipeline check); without --config: the FC-CLIP file's own layout, else
configs/smoke.py. --out_dir additionally writes the label PNG and the class-score JSON.
"""
import os
import sys

from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

# pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax import cli
from ovsnet_jax import segmenter

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file (default: see above).',
                                          lock_config=False)
_CLIP = flags.DEFINE_string('clip', '', "Converted CLIP directory; '' -> config / the weights file's own.")
_CHECKPOINT = flags.DEFINE_string('checkpoint', '', "Training workdir or FC-CLIP .pth; '' -> random decoder.")
_FUSION = flags.DEFINE_enum('fusion', None, ['none', 'gfa'], "Override model.fusion ('gfa' on FC-CLIP weights: "
                            'training-free GFA).')
_IMAGE = flags.DEFINE_string('image', None, 'Input image (any format PIL reads).')
_CLASSES = flags.DEFINE_string('classes', None, 'Vocabulary: "cat,dog|puppy,grass", a vocabulary name or a file.')
_OUT = flags.DEFINE_string('out', 'seg.png', 'Output PNG (overlay + legend).')
_OUT_DIR = flags.DEFINE_string('out_dir', '', 'Also write overlay.png, labels.png, scores.json here.')
_MIN_SIZE = flags.DEFINE_integer('min_size', 800, 'Shortest-edge resize.')
_MAX_SIZE = flags.DEFINE_integer('max_size', 1333, 'Longest-edge cap.')
_ALPHA = flags.DEFINE_float('alpha', 0.5, 'Overlay opacity.')
_LABELS = flags.DEFINE_bool('segment_labels', False, 'Write class names on the segments.')
_TEXT_CACHE = flags.DEFINE_string('text_cache', '', "Text cache dir; '' -> user cache, 'none' -> off.")
flags.mark_flags_as_required(['image', 'classes'])


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logs()
  segmenter.resolve(_CLASSES.value)  # a vocabulary typo fails before the model loads
  if not os.path.isfile(_IMAGE.value):
    raise cli.UserError(f'--image {_IMAGE.value!r} does not exist.')
  seg = segmenter.Segmenter.load(_CHECKPOINT.value, _CLIP.value, _CONFIG.value, _FUSION.value, _TEXT_CACHE.value,
                                 min_size=_MIN_SIZE.value, max_size=_MAX_SIZE.value, bucket=32)
  if not _CHECKPOINT.value:
    print('no --checkpoint: randomly initialised decoder', flush=True)
  result = seg(_IMAGE.value, _CLASSES.value)
  result.save(_OUT.value, alpha=_ALPHA.value, segment_labels=_LABELS.value)
  if _OUT_DIR.value:
    result.save(_OUT_DIR.value, alpha=_ALPHA.value, segment_labels=_LABELS.value)
  for name, share in result.areas().items():
    k = result.names.index(name)
    print(f'{name:30s} {share:5.1f}%  {"seen" if result.seen[k] else "unseen"}')
  print(f'wrote {_OUT.value}', flush=True)


if __name__ == '__main__':
  cli.run(main)
