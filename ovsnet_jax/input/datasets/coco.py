"""COCO readers: COCO-Panoptic 2017 (133 classes) and COCO-Stuff-171 semantic.

Layouts (``$DETECTRON2_DATASETS/coco``, the official downloads; ``stuffthingmaps_detectron2`` is
made by ``data/prepare_coco_stuff.py`` as by MaskFormer/SAN's ``prepare_coco_stuff_164k_sem_seg.py``)::

  coco/{train2017,val2017}/<12-digit id>.jpg
  coco/annotations/panoptic_{train2017,val2017}.json
  coco/panoptic_{train2017,val2017}/<12-digit id>.png        RGB, id = R + 256 G + 256^2 B
  coco/stuffthingmaps_detectron2/{train2017,val2017}/<id>.png  uint8 0..170, 255 ignore
"""
import logging
import os

import numpy as np

from ovsnet_jax.input.datasets import decode
from ovsnet_jax.input.datasets.coco_categories import COCO_PANOPTIC_CATEGORIES
from ovsnet_jax.input.datasets.semantic_folder import SemanticFolder, split_dir

COCO_SPLIT_DIRS = {'train': 'train2017', 'val': 'val2017'}
_PANOPTIC_PREPARE = 'the official COCO panoptic download (data/README.md, "COCO-Panoptic")'


def panoptic_id_to_contiguous() -> dict[int, int]:
  """COCO panoptic category id (1..200, with gaps) -> contiguous class index 0..132."""
  return {cat_id: i for i, (cat_id, _, _) in enumerate(COCO_PANOPTIC_CATEGORIES)}


def _field(record: dict, key: str, json_path: str, where: str):
  if not isinstance(record, dict) or key not in record:
    raise ValueError(f'{json_path}: {where} has no field {key!r}')
  return record[key]


class COCOPanoptic:
  """COCO-Panoptic 2017: ``ds[i] -> {'image', 'segment_ids', 'segments', 'file_name'}``.

  ``segment_ids``: int32 (H, W) decoded from the panoptic PNG (0 = unlabeled/void).
  ``segments``: list of ``{'id', 'category' (contiguous 0..132), 'iscrowd'}`` from the JSON's
  ``segments_info`` in JSON order (a segment may have no pixel: it is returned as listed).

  Checked on construction: the JSON parses and has ``images``/``annotations``/``categories``;
  every annotation's image and PNG exist. Skipped (counted in ``num_skipped`` and logged):
  images listed in ``images`` that have no annotation, as detectron2's ``load_coco_panoptic_json``
  iterates annotations only. Checked per example: image and PNG decode and have the same size,
  every non-zero id of the PNG is in ``segments_info``, every ``category_id`` is one of the 133.
  """

  def __init__(self, root: str, split: str = 'train'):
    d = split_dir(split, COCO_SPLIT_DIRS, 'coco_panoptic')
    base = os.path.join(root, 'coco')
    self.image_dir = decode.require_dir(
        os.path.join(base, d), 'coco_panoptic images', _PANOPTIC_PREPARE)
    self.png_dir = decode.require_dir(
        os.path.join(base, f'panoptic_{d}'), 'coco_panoptic PNGs', _PANOPTIC_PREPARE)
    self.json_path = decode.require_file(
        os.path.join(base, 'annotations', f'panoptic_{d}.json'), 'coco_panoptic JSON',
        _PANOPTIC_PREPARE)
    data = decode.read_json(self.json_path)
    for key in ('images', 'annotations', 'categories'):
      _field(data, key, self.json_path, 'the top level')
    images = {}
    for im in data['images']:
      images[_field(im, 'id', self.json_path, 'an images entry')] = _field(
          im, 'file_name', self.json_path, f'image {im["id"]}')
    image_files = set(os.listdir(self.image_dir))
    png_files = set(os.listdir(self.png_dir))
    self.records = []
    for ann in data['annotations']:
      image_id = _field(ann, 'image_id', self.json_path, 'an annotations entry')
      png = _field(ann, 'file_name', self.json_path, f'the annotation of image {image_id}')
      segments = _field(ann, 'segments_info', self.json_path, f'the annotation of image {image_id}')
      if image_id not in images:
        raise ValueError(f'{self.json_path}: annotation {png} has image_id {image_id}, '
                         'which is not in "images"')
      if images[image_id] not in image_files:
        image_path = os.path.join(self.image_dir, images[image_id])
        raise FileNotFoundError(
            f'coco_panoptic: image {image_path} of annotation {png} does not exist')
      if png not in png_files:
        raise FileNotFoundError(f'coco_panoptic: panoptic PNG {os.path.join(self.png_dir, png)} '
                                f'of image {images[image_id]} does not exist')
      self.records.append((images[image_id], png, segments))
    self.num_skipped = len(images) - len({r[0] for r in self.records})
    if self.num_skipped:
      logging.warning('coco_panoptic: %d images of %s have no annotation and are skipped',
                      self.num_skipped, self.json_path)
    self.category_map = panoptic_id_to_contiguous()
    self.num_classes = len(self.category_map)

  def __len__(self) -> int:
    return len(self.records)

  def _segments(self, segments_info: list, png_path: str) -> list[dict]:
    out = []
    for s in segments_info:
      where = f'a segments_info entry of {os.path.basename(png_path)}'
      cat = _field(s, 'category_id', self.json_path, where)
      if cat not in self.category_map:
        raise ValueError(f'{self.json_path}: segment {s.get("id")} of {os.path.basename(png_path)} '
                         f'has category_id {cat}, not one of the 133 COCO panoptic categories')
      out.append({'id': int(_field(s, 'id', self.json_path, where)),
                  'category': self.category_map[cat], 'iscrowd': int(s.get('iscrowd', 0))})
    return out

  def __getitem__(self, index: int) -> dict:
    image_name, png_name, segments_info = self.records[index]
    image_path = os.path.join(self.image_dir, image_name)
    png_path = os.path.join(self.png_dir, png_name)
    image = decode.read_image(image_path)  # (H, W, 3)
    segment_ids = decode.read_rgb_ids(png_path)  # (H, W)
    decode.check_same_size(image, segment_ids, image_path, png_path)
    segments = self._segments(segments_info, png_path)
    listed = np.array(sorted({s['id'] for s in segments} | {0}), np.int64)  # (S+1,)
    pos = np.minimum(np.searchsorted(listed, segment_ids), len(listed) - 1)  # (H, W)
    unlisted = listed[pos] != segment_ids
    if unlisted.any():
      missing = np.unique(segment_ids[unlisted]).tolist()
      raise ValueError(f'{png_path}: segment id {missing[0]} is in the PNG but not in the '
                       f'segments_info of {self.json_path} (missing ids: {missing[:8]})')
    return {'image': image, 'segment_ids': segment_ids, 'segments': segments,
            'file_name': image_path}

  def __repr__(self) -> str:
    return f'COCOPanoptic({self.json_path}, {len(self)} images)'


class COCOStuff171(SemanticFolder):
  """COCO-Stuff-164k with 171 classes (things + stuff), detectron2 layout."""

  def __init__(self, root: str, split: str = 'val'):
    d = split_dir(split, COCO_SPLIT_DIRS, 'coco_stuff171')
    base = os.path.join(root, 'coco')
    super().__init__(
        os.path.join(base, d), os.path.join(base, 'stuffthingmaps_detectron2', d),
        image_ext='jpg', label_ext='png', num_classes=171, ignore_value=255,
        what='coco_stuff171', prepare=f'python data/prepare_coco_stuff.py --root {root}')
