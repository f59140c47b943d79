"""ADE20K readers: ADE20K-150 (SceneParsing) and ADE20K-847 (full ADE20K 2021 release).

Layouts (``$DETECTRON2_DATASETS``, as left by FC-CLIP's ``prepare_ade20k_sem_seg.py`` and
``prepare_ade20k_full_sem_seg.py``, reproduced by ``data/prepare_ade20k_{150,847}.py``)::

  ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
  ADEChallengeData2016/annotations_detectron2/{training,validation}/ADE_*.png  uint8, 255 ignore
  ADE20K_2021_17_01/images_detectron2/{training,validation}/ADE_*.jpg
  ADE20K_2021_17_01/annotations_detectron2/{training,validation}/ADE_*.tif     uint16, 65535 ignore
"""
import os

from ovsnet_jax.input.datasets.semantic_folder import SPLIT_DIRS, SemanticFolder, split_dir


class ADE20K150(SemanticFolder):
  """ADE20K-150 semantic segmentation (150 classes, 2000 validation images)."""

  def __init__(self, root: str, split: str = 'val'):
    base = os.path.join(root, 'ADEChallengeData2016')
    d = split_dir(split, SPLIT_DIRS, 'ade150')
    super().__init__(
        os.path.join(base, 'images', d), os.path.join(base, 'annotations_detectron2', d),
        image_ext='jpg', label_ext='png', num_classes=150, ignore_value=255, what='ade150',
        prepare=f'python data/prepare_ade20k_150.py --root {root}')


class ADE20K847(SemanticFolder):
  """ADE20K-847 semantic segmentation (847 classes, 2000 validation images, 16-bit TIFF)."""

  def __init__(self, root: str, split: str = 'val'):
    base = os.path.join(root, 'ADE20K_2021_17_01')
    d = split_dir(split, SPLIT_DIRS, 'ade847')
    super().__init__(
        os.path.join(base, 'images_detectron2', d),
        os.path.join(base, 'annotations_detectron2', d),
        image_ext='jpg', label_ext='tif', num_classes=847, ignore_value=65535, what='ade847',
        prepare=f'python data/prepare_ade20k_847.py --root {root}')
