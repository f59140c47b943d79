"""File decoding and checks shared by every dataset reader.

Images and label maps are decoded with Pillow: it is a well-kept codec library (libjpeg-turbo,
libpng, libtiff) that reads every format the benchmarks ship in (8-bit JPEG/PNG, 16-bit PNG and
TIFF), it is what detectron2's ``read_image`` uses (so pixels match the reference pipelines), and
it raises on truncated or corrupt files instead of returning garbage.

Every error names the file and what was expected.
"""
import json
import os

import numpy as np
from PIL import Image, ImageOps

from ovsnet_jax.input import IGNORE_LABEL

# Pillow modes of single-channel label maps: 8-bit gray/palette (indices), 16-bit, 32-bit.
_LABEL_MODES = ('L', 'P', 'I;16', 'I;16L', 'I;16B', 'I', 'I;32')


def require_dir(path: str, what: str, prepare: str) -> str:
  """Returns ``path`` if it is a directory, else raises naming it and the script to run."""
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f'{what}: expected directory {path} does not exist. Create it with `{prepare}` '
        '(see data/README.md).')
  return path


def require_file(path: str, what: str, prepare: str) -> str:
  """Returns ``path`` if it is a file, else raises naming it and the script to run."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{what}: expected file {path} does not exist. Create it with `{prepare}` '
        '(see data/README.md).')
  return path


def list_stems(directory: str, ext: str) -> dict[str, str]:
  """Maps file stem -> file name for the files of ``directory`` ending in ``.ext``."""
  suffix = '.' + ext
  return {f[:-len(suffix)]: f for f in os.listdir(directory) if f.endswith(suffix)}


def pair_by_stem(image_dir: str, image_ext: str, label_dir: str, label_ext: str,
                 what: str) -> list[tuple[str, str]]:
  """Pairs images and label maps by file stem, sorted by stem (detectron2's order).

  detectron2's ``load_sem_seg`` warns and keeps the intersection when the two folders differ;
  we raise instead, naming the first unpaired file, so a half-copied dataset is never
  evaluated silently.

  Returns:
    ``[(image_path, label_path), ...]``.
  """
  images = list_stems(image_dir, image_ext)
  labels = list_stems(label_dir, label_ext)
  for stem in sorted(images):
    if stem not in labels:
      raise FileNotFoundError(
          f'{what}: image {os.path.join(image_dir, images[stem])} has no label file '
          f'{os.path.join(label_dir, stem + "." + label_ext)}')
  for stem in sorted(labels):
    if stem not in images:
      raise FileNotFoundError(
          f'{what}: label {os.path.join(label_dir, labels[stem])} has no image file '
          f'{os.path.join(image_dir, stem + "." + image_ext)}')
  if not images:
    raise FileNotFoundError(f'{what}: no *.{image_ext} images in {image_dir}')
  return [(os.path.join(image_dir, images[s]), os.path.join(label_dir, labels[s]))
          for s in sorted(images)]


def read_image(path: str) -> np.ndarray:
  """Decodes an image file to RGB. EXIF orientation is applied, as detectron2 does.

  Returns:
    uint8 (H, W, 3).
  """
  try:
    with Image.open(path) as im:
      im.load()  # decodes fully: truncated files raise here
      im = ImageOps.exif_transpose(im)
      return np.asarray(im.convert('RGB'), dtype=np.uint8)
  except FileNotFoundError:
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f'{path}: cannot decode image ({e})') from e


def read_label(path: str) -> np.ndarray:
  """Decodes a single-channel label map (8-bit or 16-bit PNG, 16-bit TIFF).

  Returns:
    int32 (H, W) raw values as stored in the file (palette PNGs give their indices).
  """
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode not in _LABEL_MODES:
        raise ValueError(f'{path}: expected a single-channel label map, got Pillow mode {im.mode}')
      return np.asarray(im).astype(np.int32)
  except FileNotFoundError:
    raise
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise ValueError(f'{path}: cannot decode label map ({e})') from e


def read_rgb_ids(path: str) -> np.ndarray:
  """Decodes a COCO-style panoptic PNG, id = R + 256 G + 256^2 B.

  Returns:
    int32 (H, W) segment ids (0 = unlabeled).
  """
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode != 'RGB':
        raise ValueError(f'{path}: expected an RGB panoptic PNG, got Pillow mode {im.mode}')
      rgb = np.asarray(im).astype(np.int32)  # (H, W, 3)
  except FileNotFoundError:
    raise
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise ValueError(f'{path}: cannot decode panoptic PNG ({e})') from e
  return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def read_json(path: str):
  """Loads a JSON file; a truncated or malformed file raises naming it."""
  with open(path, encoding='utf-8') as f:
    text = f.read()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: invalid JSON ({e})') from e


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: str, label_path: str):
  """Raises if the label map's (H, W) differs from the image's."""
  if image.shape[:2] != label.shape[:2]:
    raise ValueError(
        f'{label_path}: label size (H, W) = {label.shape[:2]} does not match image '
        f'{image_path} size {image.shape[:2]}')


def to_class_map(raw: np.ndarray, num_classes: int, ignore_value: int, path: str) -> np.ndarray:
  """Maps stored labels 0..K-1 to themselves and ``ignore_value`` to IGNORE_LABEL.

  Args:
    raw: int32 (H, W) values as stored.
    num_classes: K.
    ignore_value: the stored ignore value (255 or 65535).
    path: the file, for errors.

  Returns:
    int32 (H, W) in {-1, 0..K-1}.
  """
  ignore = raw == ignore_value
  bad = ~ignore & ((raw < 0) | (raw >= num_classes))
  if bad.any():
    values = np.unique(raw[bad])
    raise ValueError(
        f'{path}: label value {int(values[0])} is outside the class range 0..{num_classes - 1} '
        f'and is not the ignore value {ignore_value} (bad values: {values[:8].tolist()})')
  return np.where(ignore, IGNORE_LABEL, raw).astype(np.int32)
