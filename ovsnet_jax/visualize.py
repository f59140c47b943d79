"""Readable segmentation pictures: palettes, overlays, a legend scaled to the image, segment labels.

Palette (`palette`): the dataset's own colours for the shipped vocabularies that have one (ADE20K-150,
COCO panoptic, Cityscapes; `palettes.py`), except that a colour within a just-noticeable CIELAB distance (2.3)
of an earlier class's is replaced by a far one (ADE20K's own palette has 36 such pairs, road and
skyscraper are identical: 18 of its 150 colours are replaced), otherwise K colours picked greedily as far apart as possible in CIELAB
(farthest-point sampling over a 24^3 RGB grid, starting from a mid red), so any two classes differ
clearly for any K (the minimum distance shrinks only as K grows).

Text uses DejaVu Sans (bundled with matplotlib), sized to the image: about 1/40 of its shorter
side, at least 12 px.
"""
import functools
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ovsnet_jax import palettes

_GRID = 24
MIN_DELTA_E = 2.3  # CIELAB just-noticeable difference: closer dataset-palette colours are replaced


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
  """uint8/float (..., 3) sRGB 0..255 -> CIELAB (D65)."""
  c = np.asarray(rgb, np.float64) / 255.0
  c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
  m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
  xyz = (c @ m.T) / np.array([0.95047, 1.0, 1.08883])
  f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
  return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


@functools.lru_cache(maxsize=1)
def _candidates() -> tuple[np.ndarray, np.ndarray]:
  axis = np.linspace(0, 255, _GRID)
  rgb = np.stack(np.meshgrid(axis, axis, axis, indexing='ij'), -1).reshape(-1, 3)
  lab = srgb_to_lab(rgb)
  keep = (lab[:, 0] > 25) & (lab[:, 0] < 92)  # no near-black / near-white (text and background)
  return np.round(rgb[keep]).astype(np.uint8), lab[keep]


def distinct_colors(k: int, fixed: Optional[np.ndarray] = None) -> np.ndarray:
  """`k` colours, each the grid colour farthest (CIELAB) from `fixed` and those already chosen."""
  rgb, lab = _candidates()
  chosen = [] if fixed is None else list(srgb_to_lab(fixed))
  dist = np.full(len(lab), np.inf)
  for c in chosen:
    dist = np.minimum(dist, np.linalg.norm(lab - c, axis=-1))
  out = []
  for _ in range(k):
    i = int(np.argmax(dist)) if np.isfinite(dist).any() else int(np.argmin(
        np.linalg.norm(lab - srgb_to_lab(np.array([200, 40, 40])), axis=-1)))
    out.append(rgb[i])
    dist = np.minimum(dist, np.linalg.norm(lab - lab[i], axis=-1))
  return np.array(out, np.uint8).reshape(k, 3)


def palette(num_classes: int, vocabulary: Optional[str] = None) -> np.ndarray:
  """uint8 (K, 3): the dataset palette of `vocabulary` when it has one of K colours, else `distinct_colors`."""
  own = palettes.PALETTES.get(vocabulary or '')
  if own is None or len(own) != num_classes:
    return distinct_colors(num_classes)
  colors = np.array(own, np.uint8)
  lab = srgb_to_lab(colors)
  dup = [j for j in range(num_classes)
         if j and np.linalg.norm(lab[:j] - lab[j], axis=-1).min() < MIN_DELTA_E]  # (near-)copies of earlier ones
  if dup:
    keep = np.setdiff1d(np.arange(num_classes), dup)
    colors[dup] = distinct_colors(len(dup), colors[keep])
  return colors


@functools.lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont:
  """DejaVu Sans at `size` px (matplotlib's bundled copy)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), 'fonts', 'ttf', 'DejaVuSans.ttf'), size)


def font_size(height: int, width: int) -> int:
  """Legend / label text size for an image: 1/40 of its shorter side, at least 12 px."""
  return max(12, round(min(height, width) / 40))


def overlay(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """uint8 (H, W, 3): the image blended with the label colours (`alpha` = colour opacity)."""
  return (image.astype(np.float32) * (1 - alpha) + colors[labels].astype(np.float32) * alpha).round().astype(np.uint8)


def label_png(labels: np.ndarray, colors: np.ndarray) -> Image.Image:
  """A palette-indexed ('P') PNG image of the label map (values are class indices, K <= 256)."""
  if colors.shape[0] > 256:
    raise ValueError(f'label_png: {colors.shape[0]} classes do not fit an 8-bit palette PNG (max 256); '
                     'save the labels as .npy instead.')
  img = Image.fromarray(labels.astype(np.uint8), mode='P')
  pal = np.zeros((256, 3), np.uint8)
  pal[:len(colors)] = colors
  img.putpalette(pal.reshape(-1).tolist())
  return img


def _label_anchor(mask: np.ndarray) -> tuple[int, int]:
  """(y, x) where a label fits best: among the pixels deepest inside `mask` (distance transform at
  least 90% of its maximum), the one nearest the mask's centroid."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
  deep = np.argwhere(dist >= 0.9 * dist.max())  # (N, 2)
  centroid = np.argwhere(mask).mean(0)
  y, x = deep[np.argmin(np.linalg.norm(deep - centroid, axis=-1))]
  return int(y), int(x)


def draw_segment_labels(img: Image.Image, labels: np.ndarray, names: Sequence[str], min_share: float = 0.01):
  """Writes each class's name (white, dark outline) inside its largest region, for classes over `min_share`."""
  draw = ImageDraw.Draw(img)
  f = font(font_size(*labels.shape))
  ids, counts = np.unique(labels, return_counts=True)
  for k, n in zip(ids, counts):
    if n / labels.size < min_share:
      continue
    y, x = _label_anchor(labels == k)
    draw.text((x, y), names[k], font=f, fill='white', anchor='mm', stroke_width=max(1, f.size // 8),
              stroke_fill='black')


def render(image: np.ndarray, labels: np.ndarray, names: Sequence[str], colors: np.ndarray, alpha: float = 0.5,
           segment_labels: bool = False, legend: bool = True) -> Image.Image:
  """The overlay, optionally with class names on the segments, and a legend of the classes present
  (by area, with their pixel share) to its right, text scaled to the image."""
  img = Image.fromarray(overlay(image, labels, colors, alpha))
  if segment_labels:
    draw_segment_labels(img, labels, names)
  if not legend:
    return img
  ids, counts = np.unique(labels, return_counts=True)
  order = np.argsort(-counts)
  f = font(font_size(*labels.shape))
  row, pad = int(f.size * 1.5), f.size // 2
  texts = [f'{names[ids[i]]}  {100.0 * counts[i] / labels.size:.1f}%' for i in order]
  text_w = max(int(f.getlength(t)) for t in texts)
  width = pad * 3 + f.size + text_w + pad
  canvas = Image.new('RGB', (img.width + width, max(img.height, pad * 2 + row * len(texts))), 'white')
  canvas.paste(img, (0, 0))
  draw = ImageDraw.Draw(canvas)
  for j, (i, t) in enumerate(zip(order, texts)):
    x, y = img.width + pad, pad + j * row
    draw.rectangle([x, y, x + f.size, y + f.size], fill=tuple(int(c) for c in colors[ids[i]]), outline='black')
    draw.text((x + f.size + pad, y + f.size // 2), t, font=f, fill='black', anchor='lm')
  return canvas
