r"""Segments a folder of images (or a video's frames) with one vocabulary.

  python launch/segment.py --checkpoint=fcclip_cocopan.pth --images='photos/*.jpg' --classes=ade150 --out=out/
  python launch/segment.py --config=configs/smoke.py --checkpoint=/tmp/ovsnet_smoke \
      --images='shapes/*.png' --classes="circle,square,triangle" --out=out/ --min_size=64 --max_size=128
  python launch/segment.py --checkpoint=fcclip_cocopan.pth --video=clip.mp4 --every=10 --classes=... --out=out/

Per image `<name>_overlay.png` (overlay + legend), `<name>_labels.png` (palette-indexed PNG, pixel =
class index; `.npy` past 256 classes), `<name>_scores.json` (per class: max score, pixel share, seen)
and `classes.json` (the vocabulary, index order). Images are batched (--batch_size) by size bucket
(--bucket, px): one compiled program per bucket, not per image. --video reads frames with imageio
(every --every-th frame). --checkpoint/--config/--clip/--fusion as launch/demo.py.
"""
import glob
import os
import sys

from absl import flags
from ml_collections import config_flags
import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

# pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax import cli
from ovsnet_jax import segmenter

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file (default: the weights file\'s '
                                          'layout, else configs/smoke.py).', lock_config=False)
_CHECKPOINT = flags.DEFINE_string('checkpoint', '', "Training workdir or FC-CLIP .pth; '' -> random decoder.")
_CLIP = flags.DEFINE_string('clip', '', "Converted CLIP directory; '' -> config / the weights file's own.")
_FUSION = flags.DEFINE_enum('fusion', None, ['none', 'gfa'], 'Override model.fusion.')
_IMAGES = flags.DEFINE_string('images', '', "Glob of input images, e.g. 'DIR/*.jpg' (quote it).")
_VIDEO = flags.DEFINE_string('video', '', 'A video file instead of --images (frames via imageio).')
_EVERY = flags.DEFINE_integer('every', 1, 'With --video: segment every N-th frame.')
_CLASSES = flags.DEFINE_string('classes', None, 'Vocabulary: "cat,dog|puppy,grass", a vocabulary name or a file.')
_OUT = flags.DEFINE_string('out', None, 'Output folder.')
_BATCH = flags.DEFINE_integer('batch_size', 4, 'Images per model call.')
_BUCKET = flags.DEFINE_integer('bucket', 128, 'Canvas rounding in px (multiple of 32): one compile per bucket.')
_MIN_SIZE = flags.DEFINE_integer('min_size', 800, 'Shortest-edge resize.')
_MAX_SIZE = flags.DEFINE_integer('max_size', 1333, 'Longest-edge cap.')
_ALPHA = flags.DEFINE_float('alpha', 0.5, 'Overlay opacity.')
_LABELS = flags.DEFINE_bool('segment_labels', False, 'Write class names on the segments.')
_TEXT_CACHE = flags.DEFINE_string('text_cache', '', "Text cache dir; '' -> user cache, 'none' -> off.")
flags.mark_flags_as_required(['classes', 'out'])


def inputs():
  """((output stem, image path or array) iterable, count or None) from --images or --video."""
  if bool(_IMAGES.value) == bool(_VIDEO.value):
    raise cli.UserError('pass exactly one of --images=GLOB and --video=FILE.')
  if _VIDEO.value:
    if _EVERY.value < 1:
      raise cli.UserError(f'--every: expected a positive integer, got {_EVERY.value}')
    if not os.path.isfile(_VIDEO.value):
      raise cli.UserError(f'--video {_VIDEO.value!r} does not exist.')
    return segmenter.video_frames(_VIDEO.value, _EVERY.value), None  # streamed: length unknown
  paths = sorted(p for p in glob.glob(os.path.expanduser(_IMAGES.value)) if os.path.isfile(p))
  if not paths:
    raise cli.UserError(f'--images {_IMAGES.value!r}: no files match (quote the glob, e.g. --images=\'dir/*.jpg\').')
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  if len(set(stems)) != len(stems):  # same name in two folders: keep the relative path
    stems = [os.path.splitext(os.path.relpath(p))[0].replace(os.sep, '__') for p in paths]
  return list(zip(stems, paths)), len(paths)


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logs()
  if _BATCH.value < 1:
    raise cli.UserError(f'--batch_size: expected a positive integer, got {_BATCH.value}')
  items, total = inputs()
  seg = segmenter.Segmenter.load(_CHECKPOINT.value, _CLIP.value, _CONFIG.value, _FUSION.value, _TEXT_CACHE.value,
                                 min_size=_MIN_SIZE.value, max_size=_MAX_SIZE.value, bucket=_BUCKET.value,
                                 batch_size=_BATCH.value)
  with tqdm.tqdm(total=total, desc='segment', unit='img', dynamic_ncols=True) as bar:
    count = segmenter.segment_to_folder(seg, items, _CLASSES.value, _OUT.value, group=max(_BATCH.value * 8, 32),
                                        on_done=bar.update, alpha=_ALPHA.value, segment_labels=_LABELS.value)
  print(f'wrote {count} results to {_OUT.value}', flush=True)


if __name__ == '__main__':
  cli.run(main)
