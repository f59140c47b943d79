"""Writers of tiny datasets in each benchmark's real on-disk layout, for tests and smoke runs.

``write_<name>(root, num_images, size, seed, split)`` (OpenBench: ``num_classes`` instead of
``split``; Cityscapes: ``train_ids``) writes under ``root`` (a
``$DETECTRON2_DATASETS`` folder) exactly what the preparation scripts leave there: the same
folders, file names, formats (JPEG images, 8-bit PNG / 16-bit TIFF / 16-bit PNG labels, RGB
panoptic PNGs with the real JSON schema and COCO category ids), and returns the ground truth it
wrote, in the order the reader returns examples, as the reader's dicts::

  truth = write_ade150(tmp, num_images=2)
  ds = get_dataset('ade150', tmp, 'val')
  assert (ds[0]['sem_seg'] == truth[0]['sem_seg']).all()

JPEG is lossy: ``truth[i]['image']`` holds the pixels the written JPEG decodes to (Pillow), and
``truth[i]['pixels']`` the array that was encoded. PNG images are exact. Label maps contain every
kind of value: classes 0 and K-1 (so 16-bit files hold values > 255) and the ignore value.
Image widths alternate between W and W + 8 so that per-image sizes differ.
"""
import json
import os

import numpy as np
from PIL import Image

from ovsnet_jax.input import IGNORE_LABEL
from ovsnet_jax.input.datasets.cityscapes import CITYSCAPES_LABELS
from ovsnet_jax.input.datasets.coco_categories import COCO_PANOPTIC_CATEGORIES

_SPLITS = {'train': 'training', 'val': 'validation'}


def _size(size: tuple[int, int], i: int) -> tuple[int, int]:
  return size[0], size[1] + 8 * (i % 2)


def _blocks(rng: np.random.Generator, values: np.ndarray, hw: tuple[int, int],
            grid: tuple[int, int] = (3, 4)) -> np.ndarray:
  """A (H, W) map of grid cells, each holding one of ``values``; all of ``values[:cells]`` used."""
  cells = grid[0] * grid[1]
  picks = np.concatenate([values[:cells], rng.choice(values, max(cells - len(values), 0))])
  coarse = rng.permutation(picks[:cells]).reshape(grid)
  rows = np.arange(hw[0]) * grid[0] // hw[0]
  cols = np.arange(hw[1]) * grid[1] // hw[1]
  return coarse[rows][:, cols]


def _pixels(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
  """A smooth uint8 (H, W, 3) image (colour blocks + gradient) that JPEG keeps close."""
  colours = rng.integers(30, 226, size=(12, 3))
  cells = _blocks(rng, np.arange(12), hw)
  ramp = (np.arange(hw[1])[None, :, None] * 20 // max(hw[1], 1))
  return np.clip(colours[cells] + ramp, 0, 255).astype(np.uint8)


def _write_image(path: str, pixels: np.ndarray) -> np.ndarray:
  """Writes ``pixels`` (JPEG q=95 4:4:4 or PNG by extension); returns what the file decodes to."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if path.endswith('.jpg'):
    Image.fromarray(pixels).save(path, quality=95, subsampling=0)
  else:
    Image.fromarray(pixels).save(path)
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB'))


def _write_label(path: str, stored: np.ndarray, dtype) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(stored.astype(dtype)).save(path)


def _label_values(rng: np.random.Generator, num_classes: int, ignore_value: int) -> np.ndarray:
  """Class 0, class K-1, the ignore value, then random classes."""
  rest = rng.integers(0, num_classes, size=12)
  return np.concatenate([[0, num_classes - 1, ignore_value], rest])


def _semantic(root, image_dir, label_dir, stems, *, label_ext, num_classes, ignore_value,
              size, seed, image_ext='jpg', image_suffix='', label_suffix='') -> list[dict]:
  rng = np.random.default_rng(seed)
  dtype = np.uint16 if ignore_value == 65535 else np.uint8
  truth = []
  for i, stem in enumerate(stems):
    hw = _size(size, i)
    pixels = _pixels(rng, hw)
    image_path = os.path.join(root, image_dir, f'{stem}{image_suffix}.{image_ext}')
    image = _write_image(image_path, pixels)
    stored = _blocks(rng, _label_values(rng, num_classes, ignore_value), hw)  # (H, W)
    _write_label(os.path.join(root, label_dir, f'{stem}{label_suffix}.{label_ext}'), stored, dtype)
    sem_seg = np.where(stored == ignore_value, IGNORE_LABEL, stored).astype(np.int32)
    truth.append({'file_name': image_path, 'image': image, 'pixels': pixels, 'sem_seg': sem_seg})
  return sorted(truth, key=lambda t: t['file_name'])


def write_ade150(root, num_images=2, size=(24, 32), seed=0, split='val'):
  """``ADEChallengeData2016/{images,annotations_detectron2}/<split>/ADE_<split>_<8 digits>``."""
  d = _SPLITS[split]
  stems = [f'ADE_{split}_{i + 1:08d}' for i in range(num_images)]
  return _semantic(root, f'ADEChallengeData2016/images/{d}',
                   f'ADEChallengeData2016/annotations_detectron2/{d}', stems, label_ext='png',
                   num_classes=150, ignore_value=255, size=size, seed=seed)


def write_ade847(root, num_images=2, size=(24, 32), seed=0, split='val'):
  """``ADE20K_2021_17_01/{images,annotations}_detectron2/<split>/ADE_*.{jpg,tif}`` (uint16)."""
  d = _SPLITS[split]
  stems = [f'ADE_{split}_{i + 1:08d}' for i in range(num_images)]
  return _semantic(root, f'ADE20K_2021_17_01/images_detectron2/{d}',
                   f'ADE20K_2021_17_01/annotations_detectron2/{d}', stems, label_ext='tif',
                   num_classes=847, ignore_value=65535, size=size, seed=seed)


def _pascal(root, annotations, label_ext, num_classes, ignore_value, prefix, num_images, size,
            seed, split):
  d = _SPLITS[split]
  stems = [f'{prefix}_{2 * i + 1:06d}' for i in range(num_images)]
  return _semantic(root, f'{annotations[0]}/images/{d}', f'{annotations[0]}/{annotations[1]}/{d}',
                   stems, label_ext=label_ext, num_classes=num_classes,
                   ignore_value=ignore_value, size=size, seed=seed)


def write_pc59(root, num_images=2, size=(24, 32), seed=0, split='val'):
  """``pascal_ctx_d2/{images,annotations_ctx59}/<split>/<2008_000001>.{jpg,png}``."""
  return _pascal(root, ('pascal_ctx_d2', 'annotations_ctx59'), 'png', 59, 255, '2008',
                 num_images, size, seed, split)


def write_pc459(root, num_images=2, size=(24, 32), seed=0, split='val'):
  """``pascal_ctx_d2/{images,annotations_ctx459}/<split>/<2008_000001>.{jpg,tif}`` (uint16)."""
  return _pascal(root, ('pascal_ctx_d2', 'annotations_ctx459'), 'tif', 459, 65535, '2008',
                 num_images, size, seed, split)


def write_voc21(root, num_images=2, size=(24, 32), seed=0, split='val'):
  """``pascal_voc_d2/{images,annotations_pascal21}/<split>/<2007_000001>.{jpg,png}``."""
  return _pascal(root, ('pascal_voc_d2', 'annotations_pascal21'), 'png', 21, 255, '2007',
                 num_images, size, seed, split)


def write_voc20(root, num_images=2, size=(24, 32), seed=0, split='val'):
  """``pascal_voc_d2/{images,annotations_pascal20}/<split>/<2007_000001>.{jpg,png}``."""
  return _pascal(root, ('pascal_voc_d2', 'annotations_pascal20'), 'png', 20, 255, '2007',
                 num_images, size, seed, split)


def write_coco_stuff171(root, num_images=2, size=(24, 32), seed=0, split='val'):
  """``coco/<split>2017/<12 digits>.jpg`` + ``coco/stuffthingmaps_detectron2/<split>2017/*.png``."""
  d = f'{split}2017'
  stems = [f'{139 + 1000 * i:012d}' for i in range(num_images)]
  return _semantic(root, f'coco/{d}', f'coco/stuffthingmaps_detectron2/{d}', stems,
                   label_ext='png', num_classes=171, ignore_value=255, size=size, seed=seed)


def write_openbench(root, num_images=2, size=(24, 32), seed=0, num_classes=286):
  """``openbench/{images,annotations}/<stem>.{jpg,png}`` (16-bit PNG) + class_names + stats."""
  base = os.path.join(root, 'openbench')
  os.makedirs(base, exist_ok=True)
  with open(os.path.join(base, 'class_names.txt'), 'w', encoding='utf-8') as f:
    f.writelines(f'{k}:class {k},synonym {k}\n' for k in range(num_classes))
  with open(os.path.join(base, 'stats.json'), 'w', encoding='utf-8') as f:
    json.dump({'num_classes': num_classes, 'num_images': num_images}, f)
  stems = [f'openbench_{i:06d}' for i in range(num_images)]
  return _semantic(root, 'openbench/images', 'openbench/annotations', stems, label_ext='png',
                   num_classes=num_classes, ignore_value=65535, size=size, seed=seed)


def write_cityscapes(root, num_images=2, size=(32, 64), seed=0, split='val', train_ids=True):
  """Cityscapes ``leftImg8bit`` PNGs and ``gtFine`` ``*_labelIds.png`` (+ ``*_labelTrainIds.png``).

  Label ids cover all 34 labelIds; trainIds follow cityscapesScripts' table. With
  ``train_ids=False`` only the official ``labelIds`` are written (input of prepare_cityscapes).
  """
  rng = np.random.default_rng(seed)
  lut = np.full(256, 255, np.uint8)
  for _, label_id, train_id in CITYSCAPES_LABELS:
    lut[label_id] = train_id
  cities = ['frankfurt', 'lindau', 'munster'] if split == 'val' else ['aachen', 'bochum']
  truth = []
  for i in range(num_images):
    city = cities[i % len(cities)]
    stem = f'{city}_{i:06d}_{19 * i + 19:06d}'
    hw = _size(size, i)
    pixels = _pixels(rng, hw)
    image_path = os.path.join(root, 'cityscapes/leftImg8bit', split, city,
                              f'{stem}_leftImg8bit.png')
    image = _write_image(image_path, pixels)
    label_ids = _blocks(rng, rng.permutation(34), hw, grid=(4, 8)).astype(np.uint8)  # (H, W)
    gt = os.path.join(root, 'cityscapes/gtFine', split, city, f'{stem}_gtFine_')
    _write_label(gt + 'labelIds.png', label_ids, np.uint8)
    train = lut[label_ids].astype(np.int32)  # (H, W)
    if train_ids:
      _write_label(gt + 'labelTrainIds.png', train, np.uint8)
    sem_seg = np.where(train == 255, IGNORE_LABEL, train).astype(np.int32)
    truth.append({'file_name': image_path, 'image': image, 'pixels': pixels, 'sem_seg': sem_seg,
                  'label_ids': label_ids})
  return sorted(truth, key=lambda t: t['file_name'])


def _segment_info(seg_id, cat_id, iscrowd, mask):
  ys, xs = np.nonzero(mask)
  bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
  return {'id': int(seg_id), 'category_id': int(cat_id), 'iscrowd': int(iscrowd), 'bbox': bbox,
          'area': int(mask.sum())}


def write_coco_panoptic(root, num_images=2, size=(24, 32), seed=0, split='val'):
  """COCO-Panoptic 2017: ``coco/<split>2017/*.jpg``, ``coco/panoptic_<split>2017/*.png`` (RGB
  ids) and ``coco/annotations/panoptic_<split>2017.json`` with the real schema and category ids.

  Each image has 3-6 segments (things, some crowd, and stuff) with random 24-bit ids and a void
  region (id 0). Returns ``[{'file_name', 'image', 'pixels', 'segment_ids', 'segments'}]`` in
  JSON order, ``segments`` as the reader returns them (contiguous categories).
  """
  rng = np.random.default_rng(seed)
  d = f'{split}2017'
  cat_ids = np.array([c[0] for c in COCO_PANOPTIC_CATEGORIES])
  is_thing = {c[0]: c[1] for c in COCO_PANOPTIC_CATEGORIES}
  contiguous = {c: i for i, c in enumerate(cat_ids.tolist())}
  images, annotations, truth = [], [], []
  for i in range(num_images):
    image_id = int(139 + 1000 * i + rng.integers(0, 999))
    name = f'{image_id:012d}'
    hw = _size(size, i)
    pixels = _pixels(rng, hw)
    image_path = os.path.join(root, 'coco', d, name + '.jpg')
    image = _write_image(image_path, pixels)
    num_seg = int(rng.integers(3, 7))
    seg_ids = rng.choice(np.arange(1, 256 ** 3), size=num_seg, replace=False)
    cats = np.concatenate([[cat_ids[0], cat_ids[-1]], rng.choice(cat_ids, num_seg - 2)])
    slots = _blocks(rng, np.arange(num_seg + 1), hw)  # (H, W) 0 = void, k = segment k - 1
    segment_ids = np.concatenate([[0], seg_ids])[slots].astype(np.int32)  # (H, W)
    infos, segments = [], []
    for k in range(num_seg):
      crowd = int(is_thing[int(cats[k])] and k == 2)
      infos.append(_segment_info(seg_ids[k], cats[k], crowd, slots == k + 1))
      segments.append({'id': int(seg_ids[k]), 'category': contiguous[int(cats[k])],
                       'iscrowd': crowd})
    rgb = np.stack([segment_ids % 256, segment_ids // 256 % 256, segment_ids // 65536], -1)
    png_path = os.path.join(root, 'coco', f'panoptic_{d}', name + '.png')
    os.makedirs(os.path.dirname(png_path), exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(png_path)
    images.append({'license': 1, 'file_name': name + '.jpg', 'coco_url': '', 'height': hw[0],
                   'width': hw[1], 'date_captured': '2013-11-14 16:28:13', 'flickr_url': '',
                   'id': image_id})
    annotations.append({'segments_info': infos, 'file_name': name + '.png', 'image_id': image_id})
    truth.append({'file_name': image_path, 'image': image, 'pixels': pixels,
                  'segment_ids': segment_ids, 'segments': segments})
  categories = [{'supercategory': name.split('-')[0], 'isthing': thing, 'id': cid, 'name': name}
                for cid, thing, name in COCO_PANOPTIC_CATEGORIES]
  os.makedirs(os.path.join(root, 'coco', 'annotations'), exist_ok=True)
  with open(os.path.join(root, 'coco', 'annotations', f'panoptic_{d}.json'), 'w') as f:
    json.dump({'info': {'description': 'tiny COCO 2017 Panoptic', 'version': '1.0', 'year': 2017},
               'licenses': [{'url': '', 'id': 1, 'name': 'test'}], 'images': images,
               'annotations': annotations, 'categories': categories}, f)
  return truth
