"""Class-name vocabularies with synonyms.

A vocabulary is ``list[list[str]]``: per class its synonyms, the first one being the main name.
Shipped vocabularies live in ``class_names/<name>.txt`` (see ``class_names/README.md``) in FC-CLIP's
format, one class per line::

  0:invalid_class_id
  1:wall,walls,brick wall,stone wall,interior wall

``idx`` is the dataset's own id (kept for reference); classes get contiguous indices 0..K-1 in
file order. Lines named ``invalid_class_id`` are FC-CLIP's placeholders for unused dataset ids and
are skipped. Synonyms are split on ',' (FC-CLIP first turns ', ' into ','); we also strip each.
Users' own files may use the same format or a plain list, one class per line (``cat`` or
``dog,puppy``), without indices. Duplicate synonyms inside one class are kept (FC-CLIP's lists
have a few; they do not change a max over synonyms).
"""
import os
import re
from typing import List, Optional, Sequence

import numpy as np

VOCABULARIES = ('coco_panoptic_133', 'coco_stuff_171', 'ade150', 'ade847', 'pc59', 'pc459',
                'voc20', 'voc21', 'cityscapes19')
INVALID_CLASS = 'invalid_class_id'
_INDEXED_LINE = re.compile(r'^\s*(-?\d+)\s*:(.*)$')


def class_names_dir() -> str:
  """Directory of the shipped class-name files."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'class_names')


def split_synonyms(text: str, where: str) -> List[str]:
  """'wall,walls, brick wall' -> ['wall', 'walls', 'brick wall']; ``where`` names the source."""
  synonyms = [s.strip() for s in text.replace(', ', ',').split(',')]
  if any(not s for s in synonyms):
    raise ValueError(f'{where}: empty class name in {text!r}; expected comma-separated names')
  return synonyms


def parse_class_lines(lines: Sequence[str], source: str) -> List[List[str]]:
  """Parses the lines of a vocabulary file (indexed ``idx:name,syn`` or plain ``name,syn``).

  Args:
    lines: the file's lines, without line ends. Blank lines are ignored.
    source: the file name, used in error messages.

  Returns:
    Per class its synonyms (K lists of strings).
  """
  classes, first_line, indexed, last_idx = [], {}, None, None
  for n, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    where = f'{source}: line {n}'
    match = _INDEXED_LINE.match(line)
    if indexed is None:
      indexed = match is not None
    elif indexed != (match is not None):
      expected = "'idx:name,synonym,...'" if indexed else "'name,synonym,...' without an index"
      raise ValueError(f'{where}: expected {expected} like the first line, got {line!r}')
    if indexed:
      idx, text = int(match.group(1)), match.group(2)
      if last_idx is not None and idx <= last_idx:
        raise ValueError(f'{where}: class index {idx} must be larger than the previous one '
                         f'({last_idx}); indices are unique and increasing')
      last_idx = idx
      if text.strip() == INVALID_CLASS:
        continue
    else:
      text = line
    synonyms = split_synonyms(text, where)
    key = tuple(synonyms)
    if key in first_line:
      raise ValueError(f'{where}: duplicate class {text.strip()!r} (same as line {first_line[key]})')
    first_line[key] = n
    classes.append(synonyms)
  if not classes:
    raise ValueError(f'{source}: no class names found; expected one class per line')
  return classes


def read_class_file(path: str) -> List[List[str]]:
  """Reads a vocabulary file (FC-CLIP's ``idx:name,syn`` lines or a plain list of names)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'class-name file not found: {path}')
  with open(path, encoding='utf-8') as f:
    try:
      text = f.read()
    except UnicodeDecodeError as e:
      raise ValueError(f'{path}: expected a UTF-8 text file ({e})') from e
  return parse_class_lines(text.splitlines(), path)


def load_class_names(name: str) -> List[List[str]]:
  """A shipped vocabulary by name, e.g. 'ade150' -> 150 lists of synonyms."""
  if name not in VOCABULARIES:
    raise ValueError(f'unknown vocabulary {name!r}; expected one of {list(VOCABULARIES)} '
                     'or use read_class_file(path) for your own list')
  return read_class_file(os.path.join(class_names_dir(), f'{name}.txt'))


def parse_class_arg(arg: str) -> List[List[str]]:
  """Classes from a command-line string: ',' between classes, '|' between synonyms.

  'cat,dog|puppy,sky' -> [['cat'], ['dog', 'puppy'], ['sky']].
  """
  classes = []
  for n, item in enumerate(arg.split(',')):
    synonyms = [s.strip() for s in item.split('|')]
    if any(not s for s in synonyms):
      raise ValueError(f'class list {arg!r}: class {n} is empty; expected e.g. "cat,dog|puppy"')
    if synonyms in classes:
      raise ValueError(f'class list {arg!r}: duplicate class {item.strip()!r}')
    classes.append(synonyms)
  return classes


def resolve_vocabulary(spec: str) -> List[List[str]]:
  """A shipped vocabulary name, else a file path, else a command-line class list."""
  if spec in VOCABULARIES:
    return load_class_names(spec)
  if os.path.isfile(spec):
    return read_class_file(spec)
  return parse_class_arg(spec)


def seen_mask(test_classes: Sequence[Sequence[str]],
              train_classes: Optional[Sequence[Sequence[str]]] = None) -> np.ndarray:
  """FC-CLIP's ``category_overlapping_mask``: bool (K,), True where a test class is 'seen'.

  A test class is seen if any of its synonyms is among the synonyms of all training classes
  (default training vocabulary: coco_panoptic_133).
  """
  if train_classes is None:
    train_classes = load_class_names('coco_panoptic_133')
  train = {s for synonyms in train_classes for s in synonyms}
  return np.array([not train.isdisjoint(synonyms) for synonyms in test_classes], dtype=bool)
