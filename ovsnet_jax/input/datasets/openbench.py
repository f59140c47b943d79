"""OpenBench reader (layout written by ``launch/build_openbench.py``, docs/CONTRACTS.md)::

  openbench/images/<stem>.jpg
  openbench/annotations/<stem>.png   16-bit PNG, value k = class index k, 65535 = ignore
  openbench/class_names.txt          vocabulary format, lines ``idx:name,synonym,...``
  openbench/stats.json               the Table-1 row
"""
import os
import re

from ovsnet_jax.input.datasets import decode
from ovsnet_jax.input.datasets.semantic_folder import SemanticFolder, split_dir

_PREPARE = 'python launch/build_openbench.py'
_LINE = re.compile(r'^(\d+):(.+)$')


def count_classes(path: str) -> int:
  """Number of classes of a vocabulary file (``idx:name,...``; ``invalid_class_id`` skipped).

  Raises:
    ValueError: naming the file and line when a line is not ``idx:name``.
  """
  count = 0
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      m = _LINE.match(line)
      if not m:
        raise ValueError(f'{path}:{n}: expected a line "idx:name,synonym,...", got {line!r}')
      if m.group(2) != 'invalid_class_id':
        count += 1
  if not count:
    raise ValueError(f'{path}: no classes')
  return count


class OpenBench(SemanticFolder):
  """OpenBench (286 fine-grained classes in the paper; K read from ``class_names.txt``)."""

  def __init__(self, root: str, split: str = 'val'):
    split_dir(split, {'val': '', 'test': ''}, 'openbench')
    base = os.path.join(root, 'openbench')
    self.class_names_file = decode.require_file(
        os.path.join(base, 'class_names.txt'), 'openbench class names', _PREPARE)
    super().__init__(
        os.path.join(base, 'images'), os.path.join(base, 'annotations'), image_ext='jpg',
        label_ext='png', num_classes=count_classes(self.class_names_file), ignore_value=65535,
        what='openbench', prepare=_PREPARE)
