"""Semantic segmentation read from an image folder and a label folder paired by file stem.

This is detectron2's ``load_sem_seg`` layout, used by ADE20K-150/847, COCO-Stuff, Pascal Context
and Pascal VOC (after the preparation scripts), and by OpenBench.
"""
from ovsnet_jax.input.datasets import decode

# Split names accepted by every reader -> the folder names detectron2 layouts use.
SPLIT_DIRS = {'train': 'training', 'val': 'validation'}


def split_dir(split: str, dirs: dict[str, str], what: str) -> str:
  """Returns the folder name of ``split``, or raises naming the accepted splits."""
  if split not in dirs:
    raise ValueError(f'{what}: unknown split {split!r}, expected one of {sorted(dirs)}')
  return dirs[split]


class SemanticFolder:
  """Random-access semantic dataset: ``len(ds)``, ``ds[i]``.

  ``ds[i]`` is ``{'image': uint8 (H, W, 3), 'sem_seg': int32 (H, W), 'file_name': str}`` with
  stored labels 0..K-1 kept and the stored ignore value mapped to IGNORE_LABEL (-1).

  Checked on construction: both folders exist (else the error names the path and the
  preparation script), every image has its label file and vice versa. Checked per example:
  the image and label decode, have the same size, and every label is in 0..K-1 or the ignore
  value. No example is skipped: every problem raises, naming the file.
  """

  def __init__(self, image_dir: str, label_dir: str, *, image_ext: str, label_ext: str,
               num_classes: int, ignore_value: int, what: str, prepare: str):
    """Lists and pairs the files; see the class docstring for the checks.

    Args:
      image_dir: folder of ``<stem>.<image_ext>`` images.
      label_dir: folder of ``<stem>.<label_ext>`` label maps.
      image_ext: 'jpg' or 'png'.
      label_ext: 'png' or 'tif'.
      num_classes: K.
      ignore_value: the stored ignore value (255 for 8-bit, 65535 for 16-bit labels).
      what: dataset name for error messages.
      prepare: the command that creates the layout, named in errors.
    """
    decode.require_dir(image_dir, f'{what} images', prepare)
    decode.require_dir(label_dir, f'{what} labels', prepare)
    self.num_classes = num_classes
    self.ignore_value = ignore_value
    self.what = what
    self.pairs = decode.pair_by_stem(image_dir, image_ext, label_dir, label_ext, what)

  def __len__(self) -> int:
    return len(self.pairs)

  def __getitem__(self, index: int) -> dict:
    image_path, label_path = self.pairs[index]
    image = decode.read_image(image_path)  # (H, W, 3)
    raw = decode.read_label(label_path)  # (H, W)
    decode.check_same_size(image, raw, image_path, label_path)
    sem_seg = decode.to_class_map(raw, self.num_classes, self.ignore_value, label_path)
    return {'image': image, 'sem_seg': sem_seg, 'file_name': image_path}

  def __repr__(self) -> str:
    return f'{type(self).__name__}({self.what}, {len(self)} images)'
