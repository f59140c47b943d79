"""NumPy image/label transforms for training (LSJ, colour) and evaluation (resize, pad).

Pure functions on numpy arrays (PIL for resampling); no JAX. Random functions take a
`np.random.Generator` so that grain's `random_map` makes them deterministic per example.

Geometry follows detectron2 as used by FC-CLIP's `coco_panoptic_lsj` mapper
(`detectron2/data/transforms/augmentation_impl.py`): RandomFlip(0.5, horizontal) ->
ResizeScale(0.1..2.0, target 1024) -> FixedSizeCrop(1024, pad_value=128, seg_pad_value=255).
Images are resized bilinearly with PIL (as detectron2's ResizeTransform on uint8), labels with
nearest. Our label pad is IGNORE_LABEL (-1): it matches no panoptic segment id and is ignored by
semantic losses/metrics, like detectron2's 255.

Colour: the paper says "colour augmentation" and FC-CLIP's LSJ mapper has none, so we use
Mask2Former's semantic-segmentation colour augmentation, `ColorAugSSDTransform`
(`INPUT.COLOR_AUG_SSD`): brightness +-32, contrast x[0.5, 1.5], saturation x[0.5, 1.5],
hue +-18 (OpenCV's 0..180 hue scale, i.e. +-36 degrees), each applied with probability 0.5, contrast
before or after the HSV steps with probability 0.5. It is the colour augmentation of the
Mask2Former family the authors build on. HSV goes through PIL (no OpenCV dependency), uint8 like
the reference, so results are close to but not bit-identical with the cv2 version.
"""
from typing import Sequence

import numpy as np
from PIL import Image

from ovsnet_jax.input import IGNORE_LABEL

LSJ_IMAGE_PAD = 128  # detectron2 FixedSizeCrop default pad_value (128.0)


def _check_image(image: np.ndarray, name: str = 'image') -> None:
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'{name}: expected an (H, W, 3) array, got shape {image.shape}')


def _check_label(label: np.ndarray, image: np.ndarray, name: str = 'label') -> None:
  if label.shape != image.shape[:2]:
    raise ValueError(f'{name}: expected shape {image.shape[:2]} (the image size), got {label.shape}')


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """(H, W, 3) uint8 -> (h, w, 3) uint8, PIL bilinear (as detectron2's ResizeTransform)."""
  _check_image(image)
  h, w = int(size[0]), int(size[1])
  if image.shape[:2] == (h, w):
    return image
  return np.asarray(Image.fromarray(image.astype(np.uint8)).resize((w, h), Image.BILINEAR))


def resize_label(label: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """(H, W) integer label map -> (h, w) int32, nearest neighbour (PIL, as detectron2)."""
  if label.ndim != 2:
    raise ValueError(f'label: expected an (H, W) array, got shape {label.shape}')
  h, w = int(size[0]), int(size[1])
  label = label.astype(np.int32)
  if label.shape == (h, w):
    return label
  return np.asarray(Image.fromarray(label, mode='I').resize((w, h), Image.NEAREST), dtype=np.int32)


def lsj_resize_size(height: int, width: int, target: int, scale: float) -> tuple[int, int]:
  """detectron2 ResizeScale: fit (H, W) into target*scale keeping the aspect ratio."""
  out_scale = min(target * scale / height, target * scale / width)
  return int(np.round(height * out_scale)), int(np.round(width * out_scale))


def crop_offset(height: int, width: int, crop: int, u: float) -> tuple[int, int]:
  """detectron2 FixedSizeCrop: one uniform u in [0, 1) scales both (y, x) maximum offsets."""
  return int(np.round(max(height - crop, 0) * u)), int(np.round(max(width - crop, 0) * u))


def crop_and_pad(image: np.ndarray, label: np.ndarray, offset: tuple[int, int], crop: int,
                 image_pad: int = LSJ_IMAGE_PAD) -> tuple[np.ndarray, np.ndarray]:
  """Crops (crop, crop) at offset (y, x), pads bottom/right: image with image_pad, label ignore.

  Returns image uint8 (crop, crop, 3) and label int32 (crop, crop).
  """
  y, x = offset
  image = image[y:y + crop, x:x + crop]
  label = label[y:y + crop, x:x + crop]
  out_image = np.full((crop, crop, 3), image_pad, np.uint8)
  out_label = np.full((crop, crop), IGNORE_LABEL, np.int32)
  out_image[:image.shape[0], :image.shape[1]] = image
  out_label[:label.shape[0], :label.shape[1]] = label
  return out_image, out_label


def resize_crop(image: np.ndarray, label: np.ndarray, size: Sequence[int], offset: Sequence[int],
                crop: int) -> tuple[np.ndarray, np.ndarray]:
  """Resize to `size` then crop (crop, crop) at `offset`, computing only the cropped pixels.

  PIL resamples the matching source box, so the result equals resize-then-crop (labels exactly,
  images up to +-1 on ~0.05% of pixels from float rounding of the box) at a fraction of the cost
  when upscaling (ResizeScale up to 2x: 2048^2 outputs of which 1024^2 are kept).
  Returns image uint8 (h, w, 3) and label int32 (h, w), h, w <= crop.
  """
  (in_h, in_w), (out_h, out_w), (y, x) = image.shape[:2], size, offset
  h, w = min(crop, out_h - y), min(crop, out_w - x)
  box = (x * in_w / out_w, y * in_h / out_h, (x + w) * in_w / out_w, (y + h) * in_h / out_h)
  image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR, box=box))
  label = np.asarray(Image.fromarray(label.astype(np.int32), mode='I').resize((w, h), Image.NEAREST, box=box),
                     dtype=np.int32)
  return image, label


def large_scale_jitter(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, *,
                       crop_size: int = 1024, scale_range: Sequence[float] = (0.1, 2.0),
                       image_pad: int = LSJ_IMAGE_PAD) -> tuple[np.ndarray, np.ndarray]:
  """FC-CLIP's `coco_panoptic_lsj`: flip, ResizeScale, FixedSizeCrop with padding.

  Args:
    image: uint8 (H, W, 3).
    label: integer (H, W): panoptic segment ids or semantic classes; padding gets IGNORE_LABEL.
    rng: numpy generator (grain's per-example rng).
  Returns:
    image uint8 (crop, crop, 3) (the model casts to float), label int32 (crop, crop).
  """
  _check_image(image)
  _check_label(label, image)
  image = image.astype(np.uint8)
  if rng.uniform() < 0.5:
    image = np.asarray(Image.fromarray(image).transpose(Image.FLIP_LEFT_RIGHT))
    label = np.ascontiguousarray(label[:, ::-1])
  scale = rng.uniform(scale_range[0], scale_range[1])
  size = lsj_resize_size(image.shape[0], image.shape[1], crop_size, scale)
  offset = crop_offset(size[0], size[1], crop_size, rng.uniform())
  image, label = resize_crop(image, label, size, offset, crop_size)
  return crop_and_pad(image, label, (0, 0), crop_size, image_pad)


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
  """The reference's `convert`: x * alpha + beta, clipped, truncated to uint8."""
  return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def color_aug_ssd(image: np.ndarray, rng: np.random.Generator, *, brightness_delta: float = 32.0,
                  contrast_range: Sequence[float] = (0.5, 1.5),
                  saturation_range: Sequence[float] = (0.5, 1.5),
                  hue_delta: int = 18) -> np.ndarray:
  """Mask2Former's ColorAugSSDTransform on an RGB uint8 image -> uint8 (H, W, 3).

  Same steps, probabilities and uint8 truncation as the reference; HSV via PIL (uint8, hue on a
  0..255 circle) instead of OpenCV (hue 0..180): the integer hue shift in [-hue_delta, hue_delta]
  OpenCV units is rescaled to PIL's, so the shift in degrees is the same up to rounding.
  """
  _check_image(image)
  x = image.astype(np.uint8)
  if rng.uniform() < 0.5:
    x = _convert(x, beta=rng.uniform(-brightness_delta, brightness_delta))
  contrast_first = rng.uniform() < 0.5

  def contrast(x):
    return _convert(x, alpha=rng.uniform(*contrast_range)) if rng.uniform() < 0.5 else x

  if contrast_first:
    x = contrast(x)
  do_sat = rng.uniform() < 0.5
  sat = rng.uniform(*saturation_range) if do_sat else 1.0
  do_hue = rng.uniform() < 0.5
  hue = int(rng.integers(-hue_delta, hue_delta + 1)) if do_hue else 0
  if do_sat or do_hue:
    hsv = np.array(Image.fromarray(x).convert('HSV'))
    if do_sat:
      hsv[..., 1] = _convert(hsv[..., 1], alpha=sat)
    if do_hue:
      hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(hue * 256 / 180))) % 256
    x = np.asarray(Image.fromarray(hsv, 'HSV').convert('RGB'))
  if not contrast_first:
    x = contrast(x)
  return x


def panoptic_index_map(segment_ids: np.ndarray, segments: Sequence[dict], max_masks: int,
                       keep_empty: bool = False) -> dict[str, np.ndarray]:
  """Panoptic annotation -> per-pixel target index, class ids and a validity flag.

  Crowd segments are dropped, and segments with no pixel unless `keep_empty` (FC-CLIP's training
  mapper keeps every non-crowd segment); at most `max_masks` are kept, in the reader's order. The index map is the compact form of the binary masks (segments are disjoint):
  mask m is `index == m`. It is what the pipeline carries (2 bytes a pixel instead of M).

  Args:
    segment_ids: int (H, W) segment id per pixel (IGNORE_LABEL / unknown ids = no segment).
    segments: list of {'id', 'category', 'iscrowd'}.
  Returns:
    {'index': int32 (H, W) in [-1, M), 'classes': int32 (M,), 'valid': bool (M,)}, M = max_masks.
  """
  index = np.full(segment_ids.shape, -1, np.int32)
  classes = np.zeros((max_masks,), np.int32)
  valid = np.zeros((max_masks,), bool)
  n = 0
  for seg in segments:
    for key in ('id', 'category'):
      if key not in seg:
        raise ValueError(f'segments: each segment needs {key!r}, got keys {sorted(seg)}')
    if seg.get('iscrowd', 0) or n >= max_masks:
      continue
    mask = segment_ids == seg['id']
    if not keep_empty and not mask.any():
      continue
    index[mask], classes[n], valid[n] = n, seg['category'], True
    n += 1
  return {'index': index, 'classes': classes, 'valid': valid}


def compact_targets(index: np.ndarray, classes: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
  """Drops targets left without pixels (e.g. cropped away) and renumbers the rest 0..n-1.

  Not FC-CLIP's behaviour (its mapper keeps them, see `pipeline.TrainTransform`); used when
  `config.data.keep_cropped_segments` is False.

  Returns {'index': int16 (H, W), 'classes': int32 (M,), 'valid': bool (M,)}.
  """
  m = classes.shape[0]
  counts = np.bincount(index.ravel() + 1, minlength=m + 1)[1:m + 1]  # index -1 (no target) -> bin 0
  keep = valid & (counts > 0)
  table = np.full((m + 1,), -1, np.int32)  # table[-1] (last) maps "no target" to -1
  table[:m][keep] = np.arange(int(keep.sum()), dtype=np.int32)
  out_classes = np.zeros((m,), np.int32)
  out_classes[:keep.sum()] = classes[keep]
  out_valid = np.arange(m) < keep.sum()
  return {'index': table[index].astype(np.int16), 'classes': out_classes, 'valid': out_valid}


def expand_masks(index: np.ndarray, max_masks: int) -> np.ndarray:
  """int (..., H, W) target index -> bool (..., M, H, W) binary masks (NumPy)."""
  ids = np.arange(max_masks).reshape((max_masks, 1, 1))
  return index[..., None, :, :] == ids


def panoptic_targets(segment_ids: np.ndarray, segments: Sequence[dict], max_masks: int,
                     ) -> dict[str, np.ndarray]:
  """Panoptic annotation -> {'masks': bool (M, H, W), 'classes': int32 (M,), 'valid': bool (M,)}."""
  t = panoptic_index_map(segment_ids, segments, max_masks)
  return {'masks': expand_masks(t['index'], max_masks), 'classes': t['classes'], 'valid': t['valid']}


def semantic_segments(sem_seg: np.ndarray) -> list[dict]:
  """One segment per class present (IGNORE_LABEL excluded), ascending class id; id = class."""
  return [{'id': int(k), 'category': int(k), 'iscrowd': 0} for k in np.unique(sem_seg)
          if k != IGNORE_LABEL]


def semantic_targets(sem_seg: np.ndarray, max_masks: int) -> dict[str, np.ndarray]:
  """Semantic label map -> one mask per class present, as `panoptic_targets`."""
  return panoptic_targets(sem_seg, semantic_segments(sem_seg), max_masks)


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
  """detectron2 ResizeShortestEdge.get_output_shape: (new_h, new_w)."""
  scale = short / min(height, width)
  new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
  if max(new_h, new_w) > max_size:
    scale = max_size / max(new_h, new_w)
    new_h, new_w = new_h * scale, new_w * scale
  return int(new_h + 0.5), int(new_w + 0.5)


def round_up(x: int, multiple: int) -> int:
  return -(-int(x) // multiple) * multiple


def pad_image(image: np.ndarray, size: Sequence[int], value) -> np.ndarray:
  """Pads (h, w, 3) bottom/right to `size` with `value` (scalar or per channel); float32."""
  h, w = image.shape[:2]
  if h > size[0] or w > size[1]:
    raise ValueError(f'pad_image: image {image.shape[:2]} is larger than the canvas {tuple(size)}')
  out = np.empty((size[0], size[1], 3), np.float32)
  out[...] = np.asarray(value, np.float32)
  out[:h, :w] = image
  return out


def pad_label(label: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Pads (h, w) bottom/right to `size` with IGNORE_LABEL; int32."""
  h, w = label.shape
  if h > size[0] or w > size[1]:
    raise ValueError(f'pad_label: label {label.shape} is larger than the canvas {tuple(size)}')
  out = np.full(tuple(size), IGNORE_LABEL, np.int32)
  out[:h, :w] = label
  return out


def eval_resize(image: np.ndarray, sem_seg: np.ndarray, *, min_size: int = 800, max_size: int = 1333,
                size_divisibility: int = 32, pad_value=0.0) -> dict[str, np.ndarray]:
  """ResizeShortestEdge + pad to a multiple of `size_divisibility`; the label stays at full size.

  Returns {'image': float32 (Hp, Wp, 3), 'sem_seg': int32 (H, W) original,
  'orig_size': int32 (2,) (H, W), 'image_size': int32 (2,) resized (h, w) before padding}.
  """
  _check_image(image)
  _check_label(sem_seg, image, 'sem_seg')
  size = shortest_edge_size(image.shape[0], image.shape[1], min_size, max_size)
  resized = resize_image(image, size)
  canvas = (round_up(size[0], size_divisibility), round_up(size[1], size_divisibility))
  return {'image': pad_image(resized, canvas, pad_value), 'sem_seg': sem_seg.astype(np.int32),
          'orig_size': np.asarray(image.shape[:2], np.int32), 'image_size': np.asarray(size, np.int32)}
