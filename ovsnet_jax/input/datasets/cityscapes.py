"""Cityscapes semantic segmentation, 19 train classes (detectron2's ``cityscapes_fine_sem_seg``).

Layout (``$DETECTRON2_DATASETS/cityscapes``: the official ``leftImg8bit_trainvaltest.zip`` and
``gtFine_trainvaltest.zip``; ``*_labelTrainIds.png`` made by ``data/prepare_cityscapes.py`` or
cityscapesScripts' ``createTrainIdLabelImgs.py``)::

  cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  cityscapes/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  0..18, 255
"""
import os

from ovsnet_jax.input.datasets import decode
from ovsnet_jax.input.datasets.semantic_folder import SemanticFolder, split_dir

CITYSCAPES_SPLIT_DIRS = {'train': 'train', 'val': 'val'}
IMAGE_SUFFIX = '_leftImg8bit.png'
LABEL_SUFFIX = '_gtFine_labelTrainIds.png'

# cityscapesScripts labels.py: (name, id, trainId); trainId 255 = ignored in evaluation.
# 'license plate' (id -1) is never drawn into labelIds images.
CITYSCAPES_LABELS = (
    ('unlabeled', 0, 255), ('ego vehicle', 1, 255), ('rectification border', 2, 255),
    ('out of roi', 3, 255), ('static', 4, 255), ('dynamic', 5, 255), ('ground', 6, 255),
    ('road', 7, 0), ('sidewalk', 8, 1), ('parking', 9, 255), ('rail track', 10, 255),
    ('building', 11, 2), ('wall', 12, 3), ('fence', 13, 4), ('guard rail', 14, 255),
    ('bridge', 15, 255), ('tunnel', 16, 255), ('pole', 17, 5), ('polegroup', 18, 255),
    ('traffic light', 19, 6), ('traffic sign', 20, 7), ('vegetation', 21, 8),
    ('terrain', 22, 9), ('sky', 23, 10), ('person', 24, 11), ('rider', 25, 12),
    ('car', 26, 13), ('truck', 27, 14), ('bus', 28, 15), ('caravan', 29, 255),
    ('trailer', 30, 255), ('train', 31, 16), ('motorcycle', 32, 17), ('bicycle', 33, 18),
)


def label_id_to_train_id() -> dict[int, int]:
  """Cityscapes labelId (0..33) -> trainId (0..18, 255 = ignore)."""
  return {label_id: train_id for _, label_id, train_id in CITYSCAPES_LABELS}


def _pairs(image_root: str, label_root: str) -> list[tuple[str, str]]:
  """Pairs ``*_leftImg8bit.png`` with ``*_gtFine_labelTrainIds.png`` city by city."""
  pairs = []
  for city in sorted(os.listdir(image_root)):
    image_dir = os.path.join(image_root, city)
    if not os.path.isdir(image_dir):
      continue
    label_dir = os.path.join(label_root, city)
    if not os.path.isdir(label_dir):
      raise FileNotFoundError(f'cityscapes: city {city} has images in {image_dir} but no label '
                              f'folder {label_dir}')
    images = {f[:-len(IMAGE_SUFFIX)]: f for f in os.listdir(image_dir) if f.endswith(IMAGE_SUFFIX)}
    labels = {f[:-len(LABEL_SUFFIX)]: f for f in os.listdir(label_dir) if f.endswith(LABEL_SUFFIX)}
    for stem in sorted(images):
      if stem not in labels:
        raise FileNotFoundError(
            f'cityscapes: image {os.path.join(image_dir, images[stem])} has no label file '
            f'{os.path.join(label_dir, stem + LABEL_SUFFIX)} (make the trainId maps with '
            '`python data/prepare_cityscapes.py --root <root>`)')
      pairs.append((os.path.join(image_dir, images[stem]), os.path.join(label_dir, labels[stem])))
    for stem in sorted(labels):
      if stem not in images:
        raise FileNotFoundError(f'cityscapes: label {os.path.join(label_dir, labels[stem])} has '
                                f'no image file {os.path.join(image_dir, stem + IMAGE_SUFFIX)}')
  if not pairs:
    raise FileNotFoundError(f'cityscapes: no *{IMAGE_SUFFIX} images under {image_root}')
  return pairs


class Cityscapes(SemanticFolder):
  """Cityscapes fine annotations, 19 classes (500 validation images of 1024 x 2048)."""

  def __init__(self, root: str, split: str = 'val'):
    d = split_dir(split, CITYSCAPES_SPLIT_DIRS, 'cityscapes')
    base = os.path.join(root, 'cityscapes')
    prepare = f'python data/prepare_cityscapes.py --root {root}'
    image_root = decode.require_dir(os.path.join(base, 'leftImg8bit', d), 'cityscapes images',
                                    prepare)
    label_root = decode.require_dir(os.path.join(base, 'gtFine', d), 'cityscapes labels', prepare)
    self.num_classes = 19
    self.ignore_value = 255
    self.what = 'cityscapes'
    self.pairs = _pairs(image_root, label_root)
