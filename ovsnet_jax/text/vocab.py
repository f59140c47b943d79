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

A vocabulary given as one string (``resolve_vocabulary``: --classes, the Python API, the web demo):

- with a ',' or '|': a class list, ',' between classes, '|' between synonyms
  ("cat,dog|puppy,grass"); a trailing ',' is allowed, so "cat," is the one-class vocabulary [['cat']];
- else, with a path separator or a file suffix ('/', '.txt', ...), or naming an existing file: a
  class-name file; a missing file is an error naming it;
- else (a single bare word or phrase, e.g. "ade150" or "coco"): the name of a shipped vocabulary
  (``VOCABULARIES``); any other name is an error that suggests the closest shipped names. A bare
  word is never silently read as a one-class vocabulary (a typo like "ade151" would otherwise paint
  the whole image one class).
"""
import difflib
import os
import re
from typing import List, Optional, Sequence

import numpy as np

from ovsnet_jax import cli

VOCABULARIES = ('coco_panoptic_133', 'coco_stuff_171', 'ade150', 'ade847', 'pc59', 'pc459',
                'voc20', 'voc21', 'cityscapes19')
INVALID_CLASS = 'invalid_class_id'
_INDEXED_LINE = re.compile(r'^\s*(-?\d+)\s*:(.*)$')


class VocabularyError(cli.UserError, ValueError):
  """A vocabulary spec that names no shipped vocabulary, no file and no class list."""


def closest_vocabularies(name: str, n: int = 3) -> List[str]:
  """Shipped vocabulary names closest to `name` (difflib; prefix matches first), best first."""
  low = os.path.splitext(os.path.basename(name.strip()))[0].lower()
  prefix = [v for v in VOCABULARIES if low and (v.startswith(low) or low.startswith(v))]
  close = difflib.get_close_matches(low, VOCABULARIES, n=n, cutoff=0.5)
  return list(dict.fromkeys(prefix + close))[:n]


def _suggest(name: str) -> str:
  close = closest_vocabularies(name)
  return (f"did you mean {' or '.join(repr(c) for c in close)}? " if close else '') + \
      f'shipped vocabularies: {", ".join(VOCABULARIES)}'


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
    raise VocabularyError(f'unknown vocabulary {name!r}; expected one of {list(VOCABULARIES)} '
                          f'or use read_class_file(path) for your own list ({_suggest(name)})')
  return read_class_file(os.path.join(class_names_dir(), f'{name}.txt'))


def parse_class_arg(arg: str) -> List[List[str]]:
  """Classes from a command-line string: ',' between classes, '|' between synonyms.

  'cat,dog|puppy,sky' -> [['cat'], ['dog', 'puppy'], ['sky']]; one trailing ',' is allowed
  ('cat,' -> [['cat']]).
  """
  items = arg.split(',')
  if len(items) > 1 and not items[-1].strip():
    items = items[:-1]
  classes = []
  for n, item in enumerate(items):
    synonyms = [s.strip() for s in item.split('|')]
    if any(not s for s in synonyms):
      raise VocabularyError(f'class list {arg!r}: class {n} is empty; expected e.g. "cat,dog|puppy"')
    if synonyms in classes:
      raise VocabularyError(f'class list {arg!r}: duplicate class {item.strip()!r}')
    classes.append(synonyms)
  return classes


def looks_like_path(spec: str) -> bool:
  """A path separator or a file suffix (e.g. '.txt'): the spec names a class-name file."""
  return os.sep in spec or '/' in spec or bool(os.path.splitext(spec)[1].strip('.').isalnum()
                                                and os.path.splitext(spec)[1])


def resolve_vocabulary(spec: str) -> List[List[str]]:
  """A vocabulary from one string: a class list, a class-name file or a shipped name (module doc).

  Raises:
    VocabularyError (a ValueError and a cli.UserError) naming the unknown name or missing file,
    with the closest shipped vocabulary names.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise VocabularyError(f'vocabulary {spec!r}: expected a class list "cat,dog|puppy", a class-name file '
                          f'or a shipped vocabulary ({", ".join(VOCABULARIES)})')
  spec = spec.strip()
  if spec in VOCABULARIES:
    return load_class_names(spec)
  if ',' in spec or '|' in spec:
    return parse_class_arg(spec)
  if os.path.isfile(spec):
    return read_class_file(spec)
  if looks_like_path(spec):
    raise VocabularyError(f'class-name file not found: {spec} ({_suggest(spec)})')
  raise VocabularyError(f'unknown vocabulary {spec!r}: a single name must be a shipped vocabulary; '
                        f'{_suggest(spec)}. For a class list use "," between classes (one class: '
                        f'"{spec},").')


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
