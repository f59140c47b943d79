r"""Segments one image with any vocabulary and writes a colour overlay PNG with a legend.

  python launch/demo.py --config=configs/ovsnet_base.py --clip=CLIP_DIR --checkpoint=WORKDIR \
      --image=street.jpg --classes="car,person|people,road,building|opera house,sky" --out=seg.png
  # classes: ',' between classes, '|' between synonyms; or a vocabulary name (ade150, pc59, ...)
  # or a class file (lines 'idx:name,synonym'). Without --clip / --checkpoint the CLIP and/or the
  # decoder are randomly initialised (pipeline check: the labels are then meaningless).

Prints the classes found with their pixel share; --min_size/--max_size set the test resize
(800/1333 as FC-CLIP's evaluation).
"""
import os
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

# pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax import inference
from ovsnet_jax import train
from ovsnet_jax.models import ovsnet
from ovsnet_jax.text import vocab

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_CLIP = flags.DEFINE_string('clip', '', "Converted CLIP directory; '' -> config.clip_checkpoint (or random).")
_CHECKPOINT = flags.DEFINE_string('checkpoint', '', "Training workdir / checkpoint; '' -> random decoder.")
_IMAGE = flags.DEFINE_string('image', None, 'Input image (any format PIL reads).')
_CLASSES = flags.DEFINE_string('classes', None, 'Vocabulary: "cat,dog|puppy,grass", a vocabulary name or a file.')
_OUT = flags.DEFINE_string('out', 'seg.png', 'Output PNG (overlay + legend).')
_MIN_SIZE = flags.DEFINE_integer('min_size', 800, 'Shortest-edge resize.')
_MAX_SIZE = flags.DEFINE_integer('max_size', 1333, 'Longest-edge cap.')
_ALPHA = flags.DEFINE_float('alpha', 0.5, 'Overlay opacity.')
flags.mark_flags_as_required(['config', 'image', 'classes'])


def palette(num_classes: int) -> np.ndarray:
  """Distinct-ish fixed colours: uint8 (K, 3)."""
  hues = (np.arange(num_classes) * 0.618033988749895) % 1.0
  rgb = np.stack([np.abs(hues * 6 - 3) - 1, 2 - np.abs(hues * 6 - 2), 2 - np.abs(hues * 6 - 4)], -1)
  return (np.clip(rgb, 0, 1) * 200 + 40).astype(np.uint8)


def render(image: np.ndarray, labels: np.ndarray, names: list, alpha: float) -> Image.Image:
  """Overlay of the label map on the image plus a legend of the classes present (by area)."""
  colors = palette(len(names))
  overlay = (image * (1 - alpha) + colors[labels] * alpha).astype(np.uint8)
  ids, counts = np.unique(labels, return_counts=True)
  order = ids[np.argsort(-counts)]
  row = 18
  legend_w = 12 + 8 * max(len(f'{names[k]} 100.0%') for k in order) + 24
  canvas = Image.new('RGB', (image.shape[1] + legend_w, max(image.shape[0], row * len(order) + 8)), 'white')
  canvas.paste(Image.fromarray(overlay), (0, 0))
  draw = ImageDraw.Draw(canvas)
  for i, k in enumerate(order):
    x, y = image.shape[1] + 8, 4 + i * row
    draw.rectangle([x, y, x + 14, y + 14], fill=tuple(int(c) for c in colors[k]))
    share = 100.0 * counts[ids == k][0] / labels.size
    draw.text((x + 20, y + 1), f'{names[k]} {share:.1f}%', fill='black')
  return canvas


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if _CLIP.value:
    config.clip_checkpoint = _CLIP.value
  if not os.path.isfile(_IMAGE.value):
    raise FileNotFoundError(f'--image={_IMAGE.value}: no such file')
  image = np.asarray(Image.open(_IMAGE.value).convert('RGB'))
  class_names = vocab.resolve_vocabulary(_CLASSES.value)
  _, clip_params = train.load_clip(config)
  model = ovsnet.build_model(config)
  if _CHECKPOINT.value:
    from ovsnet_jax import evaluate
    params = evaluate.load_params(_CHECKPOINT.value)
  else:
    print('no --checkpoint: randomly initialised decoder', flush=True)
    params = jax.jit(lambda key, clip: ovsnet.init_params(config, key, clip))(jax.random.PRNGKey(config.seed),
                                                                             clip_params)
  classify = train.text_classifier(config, clip_params, config.text.cache_dir or None)
  result = inference.segment(params, image, class_names, model=model, classify=classify,
                             min_size=_MIN_SIZE.value, max_size=_MAX_SIZE.value)
  names = [c[0] for c in class_names]
  render(image, result['labels'], names, _ALPHA.value).save(_OUT.value)
  ids, counts = np.unique(result['labels'], return_counts=True)
  for k, n in sorted(zip(ids, counts), key=lambda t: -t[1]):
    print(f'{names[k]:30s} {100.0 * n / result["labels"].size:5.1f}%  {"seen" if result["seen"][k] else "unseen"}')
  print(f'wrote {_OUT.value}', flush=True)


if __name__ == '__main__':
  app.run(main)
