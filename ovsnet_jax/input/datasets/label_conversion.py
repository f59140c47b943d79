"""Label conversions from the official downloads to the detectron2 layouts (used by data/prepare_*.py).

Each function is pure: official label array in, stored label array out (the values the readers
expect: 0..K-1 plus 255 for 8-bit or 65535 for 16-bit ignore). The rules are FC-CLIP's /
Mask2Former's / ODISE's preparation scripts (cited per function).
"""
import numpy as np
from PIL import Image, ImageDraw

from ovsnet_jax.input.datasets.cityscapes import CITYSCAPES_LABELS
from ovsnet_jax.input.datasets.coco_categories import COCO_STUFF_171_IDS

# Pascal Context: 0 (unlabeled) and the 59 frequent classes, as ids of the 459-class list
# (1-based, trainval/*.mat LabelMap values). FC-CLIP/ODISE prepare_pascal_ctx_sem_seg.py.
PASCAL_CTX_59_IDS = np.sort(np.array([
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162,
    420, 454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72,
    458, 34, 207, 80, 355, 85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115]))


def _expect(array: np.ndarray, dtype, ndim: int, what: str):
  if array.dtype != dtype or array.ndim != ndim:
    raise ValueError(f'{what}: expected a {ndim}-D {np.dtype(dtype).name} array, got '
                     f'{array.ndim}-D {array.dtype}')


def ade150_from_scene_parsing(label: np.ndarray) -> np.ndarray:
  """ADEChallengeData2016 annotations (0 = other, 1..150) -> 0..149, 255 ignore (uint8).

  Mask2Former ``prepare_ade20k_sem_seg.py``: ``x - 1`` in uint8, so 0 wraps to 255.
  """
  _expect(label, np.uint8, 2, 'ADE20K-150 annotation')
  return label - np.uint8(1)


def voc21_from_segmentation_class(label: np.ndarray) -> np.ndarray:
  """VOC2012 SegmentationClass palette indices (0 background, 1..20, 255 boundary): unchanged."""
  _expect(label, np.uint8, 2, 'VOC SegmentationClass')
  return label.copy()


def voc20_from_segmentation_class(label: np.ndarray) -> np.ndarray:
  """VOC2012 SegmentationClass -> 0..19 without background; background and boundary -> 255."""
  _expect(label, np.uint8, 2, 'VOC SegmentationClass')
  out = label.copy()
  out[out == 0] = 255
  out = out - np.uint8(1)
  out[out == 254] = 255
  return out


def ctx459_from_label_map(label_map: np.ndarray) -> np.ndarray:
  """Pascal Context ``trainval/<id>.mat`` LabelMap (0 unlabeled, 1..459) -> 0..458, 65535 (uint16).

  ODISE/FC-CLIP ``prepare_pascal_ctx_full_sem_seg.py``.
  """
  _expect(label_map, np.uint16, 2, 'Pascal Context LabelMap')
  out = label_map.astype(np.int64) - 1
  return np.where(out < 0, 65535, out).astype(np.uint16)


def ctx59_from_label_map(label_map: np.ndarray) -> np.ndarray:
  """Pascal Context LabelMap (459 ids) -> the 59 frequent classes 0..58, everything else 255.

  FC-CLIP/ODISE map the Detail-API class mask (which holds only these 59 ids and 0) through
  ``PASCAL_CTX_59_IDS`` and subtract 1; here the same map is applied to the .mat LabelMap, with
  the 400 rare classes (not in the Detail masks) sent to 0 first, i.e. to ignore.
  """
  _expect(label_map, np.uint16, 2, 'Pascal Context LabelMap')
  lut = np.zeros(max(int(label_map.max()) + 1, 460), np.int64)
  lut[PASCAL_CTX_59_IDS] = np.arange(len(PASCAL_CTX_59_IDS))
  index = lut[label_map]  # (H, W) 0 unlabeled/rare, 1..59
  return np.where(index == 0, 255, index - 1).astype(np.uint8)


def coco_stuff_from_stuffthingmaps(label: np.ndarray) -> np.ndarray:
  """COCO ``stuffthingmaps_trainval2017`` PNG (COCO id - 1, 255 unlabeled) -> 0..170, 255.

  MaskFormer/SAN ``prepare_coco_stuff_164k_sem_seg.py``: ids outside the 171 become 255.
  """
  _expect(label, np.uint8, 2, 'COCO stuffthingmaps')
  lut = np.full(256, 255, np.uint8)
  for i, cat_id in enumerate(COCO_STUFF_171_IDS):
    lut[cat_id - 1] = i
  return lut[label]


def cityscapes_train_ids(label_ids: np.ndarray) -> np.ndarray:
  """Cityscapes ``*_gtFine_labelIds.png`` (0..33) -> trainIds 0..18, 255 (cityscapesScripts)."""
  _expect(label_ids, np.uint8, 2, 'Cityscapes labelIds')
  lut = np.full(256, 255, np.uint8)
  for _, label_id, train_id in CITYSCAPES_LABELS:
    lut[label_id] = train_id
  return lut[label_ids]


def cityscapes_train_ids_from_polygons(polygons: dict, what: str = 'polygons') -> np.ndarray:
  """Rasterises a ``*_gtFine_polygons.json`` to trainIds, as cityscapesScripts json2labelImg.

  Background is 'unlabeled' (255); objects are drawn in file order (later ones on top); deleted
  objects and 'license plate' are skipped; '<name>group' falls back to '<name>'.
  """
  train_id = {name: t for name, _, t in CITYSCAPES_LABELS}
  try:
    size = (int(polygons['imgWidth']), int(polygons['imgHeight']))
    objects = polygons['objects']
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f'{what}: expected imgWidth, imgHeight and objects ({e})') from e
  image = Image.new('L', size, 255)
  draw = ImageDraw.Draw(image)
  for obj in objects:
    if obj.get('deleted'):
      continue
    label = obj['label']
    if label not in train_id and label.endswith('group'):
      label = label[:-len('group')]
    if label == 'license plate':
      continue
    if label not in train_id:
      raise ValueError(f'{what}: unknown Cityscapes label {obj["label"]!r}')
    draw.polygon([tuple(p) for p in obj['polygon']], fill=train_id[label])
  return np.asarray(image)


def ade847_from_full_seg(seg: np.ndarray, class_ids: list[int]) -> np.ndarray:
  """ADE20K 2021 ``*_seg.png`` (class = R // 10 * 256 + G) -> 0..846, 65535 (uint16).

  Args:
    seg: uint8 (H, W, 3) RGB of the ``_seg.png``.
    class_ids: the ADE full-release class index of each of the 847 classes, in class order
      (``data/ade20k_847_ids.json``, from ODISE/FC-CLIP ``prepare_ade20k_full_sem_seg.py``).
  """
  _expect(seg, np.uint8, 3, 'ADE20K _seg.png')
  cls = (seg[..., 0].astype(np.int64) // 10) * 256 + seg[..., 1].astype(np.int64)  # (H, W)
  lut = np.full(max(int(cls.max()), max(class_ids)) + 1, 65535, np.uint16)
  lut[np.asarray(class_ids)] = np.arange(len(class_ids), dtype=np.uint16)
  return lut[cls]


def ade847_resized_size(h: int, w: int, max_size: int = 512) -> tuple[int, int] | None:
  """FC-CLIP's ADE-847 downscale: short side to ``max_size`` when both sides exceed it."""
  if w >= h > max_size:
    return max_size, round(w / float(h) * max_size)
  if h >= w > max_size:
    return round(h / float(w) * max_size), max_size
  return None


def resize_nearest(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """OpenCV INTER_NEAREST: source index floor(dst * src / dst_size)."""
  rows = np.minimum((np.arange(hw[0]) * (label.shape[0] / hw[0])).astype(np.int64),
                    label.shape[0] - 1)
  cols = np.minimum((np.arange(hw[1]) * (label.shape[1] / hw[1])).astype(np.int64),
                    label.shape[1] - 1)
  return label[rows][:, cols]


def resize_bilinear(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """OpenCV INTER_LINEAR (half-pixel centres, no antialiasing) on uint8 (H, W, C), rounded.

  OpenCV uses 11-bit fixed-point weights, so values may differ from it by 1.
  """
  def axis(dst, src):
    x = (np.arange(dst) + 0.5) * (src / dst) - 0.5
    x0 = np.clip(np.floor(x), 0, src - 1).astype(np.int64)
    x1 = np.minimum(x0 + 1, src - 1)
    t = np.clip(x - x0, 0.0, 1.0)
    return x0, x1, t
  y0, y1, ty = axis(hw[0], image.shape[0])
  x0, x1, tx = axis(hw[1], image.shape[1])
  img = image.astype(np.float64)
  top = img[y0][:, x0] * (1 - tx)[None, :, None] + img[y0][:, x1] * tx[None, :, None]
  bottom = img[y1][:, x0] * (1 - tx)[None, :, None] + img[y1][:, x1] * tx[None, :, None]
  out = top * (1 - ty)[:, None, None] + bottom * ty[:, None, None]
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)

