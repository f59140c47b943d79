"""Dataset readers for every benchmark, and the registry that names them.

``get_dataset(name, root, split)`` returns a random-access reader (``len(ds)``, ``ds[i] -> dict``,
docs/CONTRACTS.md "Data"); ``root`` is the ``$DETECTRON2_DATASETS`` folder. ``DATASETS[name]``
says what the dataset is: its class-name list (``vocab.load_class_names``), number of classes,
the ignore value stored on disk (always returned as ``IGNORE_LABEL = -1``), the test-time
resize FC-CLIP uses, and the command that prepares it.

Example::

  ds = get_dataset('ade150', '/data/d2', 'val')
  ex = ds[0]  # {'image': uint8 (H, W, 3), 'sem_seg': int32 (H, W), 'file_name': str}
"""
import dataclasses
from typing import Callable, Optional

from ovsnet_jax.input.datasets.ade20k import ADE20K150, ADE20K847
from ovsnet_jax.input.datasets.cityscapes import Cityscapes
from ovsnet_jax.input.datasets.coco import COCOPanoptic, COCOStuff171
from ovsnet_jax.input.datasets.openbench import OpenBench
from ovsnet_jax.input.datasets.pascal import (PascalContext59, PascalContext459, PascalVOC20,
                                              PascalVOC21)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a benchmark is.

  Attributes:
    reader: ``reader(root, split)`` builds the dataset.
    task: 'semantic' (``sem_seg``) or 'panoptic' (``segment_ids`` + ``segments``).
    class_names: key of ``vocab.load_class_names``; None when the dataset carries its own
      vocabulary file (OpenBench: ``reader.class_names_file``).
    num_classes: K; None when read from the dataset (OpenBench).
    ignore_value: the ignore value stored on disk (panoptic: segment id 0 is unlabeled).
    splits: the accepted ``split`` names.
    test_size: (min short side, max long side) of FC-CLIP's test-time resize.
    prepare: the command that creates the layout from the official download.
  """
  reader: Callable
  task: str
  class_names: Optional[str]
  num_classes: Optional[int]
  ignore_value: int
  splits: tuple[str, ...]
  test_size: tuple[int, int]
  prepare: str


_D2 = (800, 1333)  # detectron2 ResizeShortestEdge(800, max_size=1333)
DATASETS = {
    'coco_panoptic': DatasetInfo(COCOPanoptic, 'panoptic', 'coco_panoptic_133', 133, 0,
                                 ('train', 'val'), _D2, 'official download (data/README.md)'),
    'coco_stuff171': DatasetInfo(COCOStuff171, 'semantic', 'coco_stuff_171', 171, 255,
                                 ('train', 'val'), _D2, 'python data/prepare_coco_stuff.py'),
    'ade150': DatasetInfo(ADE20K150, 'semantic', 'ade150', 150, 255, ('train', 'val'), _D2,
                          'python data/prepare_ade20k_150.py'),
    'ade847': DatasetInfo(ADE20K847, 'semantic', 'ade847', 847, 65535, ('train', 'val'), _D2,
                          'python data/prepare_ade20k_847.py'),
    'pc59': DatasetInfo(PascalContext59, 'semantic', 'pc59', 59, 255, ('train', 'val'), _D2,
                        'python data/prepare_pascal_context.py'),
    'pc459': DatasetInfo(PascalContext459, 'semantic', 'pc459', 459, 65535, ('train', 'val'),
                         _D2, 'python data/prepare_pascal_context.py'),
    'voc20': DatasetInfo(PascalVOC20, 'semantic', 'voc20', 20, 255, ('train', 'val'), _D2,
                         'python data/prepare_pascal_voc.py'),
    'voc21': DatasetInfo(PascalVOC21, 'semantic', 'voc21', 21, 255, ('train', 'val'), _D2,
                         'python data/prepare_pascal_voc.py'),
    'cityscapes': DatasetInfo(Cityscapes, 'semantic', 'cityscapes19', 19, 255, ('train', 'val'),
                              (1024, 2560), 'python data/prepare_cityscapes.py'),
    'openbench': DatasetInfo(OpenBench, 'semantic', None, None, 65535, ('val', 'test'), _D2,
                             'python launch/build_openbench.py'),
}


def dataset_info(name: str) -> DatasetInfo:
  """The registry entry of ``name``; raises naming the known datasets."""
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}, expected one of {sorted(DATASETS)}')
  return DATASETS[name]


def get_dataset(name: str, root: str, split: str):
  """Builds the reader of dataset ``name`` under ``root`` ($DETECTRON2_DATASETS) for ``split``."""
  return dataset_info(name).reader(root, split)
