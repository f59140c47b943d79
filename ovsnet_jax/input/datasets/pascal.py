"""Pascal readers: Pascal Context 59/459 and Pascal VOC 2012 20/21.

Layouts (``$DETECTRON2_DATASETS``, as left by FC-CLIP's ``prepare_pascal_ctx_sem_seg.py``,
``prepare_pascal_ctx_full_sem_seg.py`` and ``prepare_pascal_voc_sem_seg.py``, reproduced by
``data/prepare_pascal_context.py`` and ``data/prepare_pascal_voc.py``)::

  pascal_ctx_d2/images/{training,validation}/<id>.jpg
  pascal_ctx_d2/annotations_ctx59/{training,validation}/<id>.png    uint8, 255 ignore
  pascal_ctx_d2/annotations_ctx459/{training,validation}/<id>.tif   uint16, 65535 ignore
  pascal_voc_d2/images/{training,validation}/<id>.jpg
  pascal_voc_d2/annotations_pascal21/{training,validation}/<id>.png  uint8, 0 background, 255 ignore
  pascal_voc_d2/annotations_pascal20/{training,validation}/<id>.png  uint8, background -> 255
"""
import os

from ovsnet_jax.input.datasets.semantic_folder import SPLIT_DIRS, SemanticFolder, split_dir


class _Pascal(SemanticFolder):
  """A Pascal benchmark: images and one annotation folder of ``base``."""
  base = ''
  annotations = ''
  label_ext = 'png'
  num = 0
  ignore = 255
  name = ''
  script = ''

  def __init__(self, root: str, split: str = 'val'):
    base = os.path.join(root, self.base)
    d = split_dir(split, SPLIT_DIRS, self.name)
    super().__init__(
        os.path.join(base, 'images', d), os.path.join(base, self.annotations, d),
        image_ext='jpg', label_ext=self.label_ext, num_classes=self.num,
        ignore_value=self.ignore, what=self.name,
        prepare=f'python data/{self.script} --root {root}')


class PascalContext59(_Pascal):
  """Pascal Context with the 59 frequent classes (5105 validation images)."""
  base, annotations, num, name = 'pascal_ctx_d2', 'annotations_ctx59', 59, 'pc59'
  script = 'prepare_pascal_context.py'


class PascalContext459(_Pascal):
  """Pascal Context with all 459 classes, 16-bit TIFF labels."""
  base, annotations, num, name = 'pascal_ctx_d2', 'annotations_ctx459', 459, 'pc459'
  label_ext, ignore, script = 'tif', 65535, 'prepare_pascal_context.py'


class PascalVOC21(_Pascal):
  """Pascal VOC 2012 with background (21 classes, 1449 validation images)."""
  base, annotations, num, name = 'pascal_voc_d2', 'annotations_pascal21', 21, 'voc21'
  script = 'prepare_pascal_voc.py'


class PascalVOC20(_Pascal):
  """Pascal VOC 2012 without background (20 classes; background pixels are ignored)."""
  base, annotations, num, name = 'pascal_voc_d2', 'annotations_pascal20', 20, 'voc20'
  script = 'prepare_pascal_voc.py'
