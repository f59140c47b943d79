"""OpenBench construction (paper Section 3.2): similarity filtering of source datasets.

1. Every source class gets its maximum CLIP text similarity to the training classes
   (``similarity.vocabulary_similarity``).
2. Scan: each image's present classes (``scan.jsonl``, independent of the thresholds).
3. An image's similarity is the minimum over its present classes; images above ``sigma1`` are
   dropped (``image_similarity``, ``keep_image``).
4. In kept images, classes above ``sigma2`` become "others"; the dataset's own background
   becomes "others" too (``background='others'``, [UNVERIFIED]: the paper says OpenBench accounts
   for "other or background pixels") or ignore.
5. Manual curation (JSON, ``read_manual``): ``exclude_classes`` ("source:name" keys; pixels
   ignored, not counted in image similarity), ``exclude_images`` (stems) and ``merge``
   ("source:name" -> final name). Classes with the same final name are merged (across sources
   too); a repeated main name inside one source gets the key "source:name#2" (ImageNet's two
   'crane's), so that a merge can rename it apart.
6. The vocabulary is every final class present in a kept image, in (source, class) order, then
   "others"; written in the OpenBench layout (docs/CONTRACTS.md) with ``stats.json``: the
   Table-1 row of the vocabulary without "others", recomputed with the same prompting.
"""
import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from ovsnet_jax.openbench import similarity, sources

OTHERS = 'others'
BACKGROUND_CHOICES = ('others', 'ignore')
IGNORE_VALUE = 65535  # OpenBench annotations: 16-bit PNG, 65535 = ignore


@dataclasses.dataclass(frozen=True)
class Manual:
  exclude_classes: tuple = ()
  exclude_images: tuple = ()
  merge: tuple = ()  # sorted ('source:name', target) pairs

  def as_dict(self) -> dict:
    return {'exclude_classes': list(self.exclude_classes), 'exclude_images': list(self.exclude_images),
            'merge': dict(self.merge)}


def read_manual(path: Optional[str]) -> Manual:
  """The curation JSON ``{"exclude_classes": [...], "exclude_images": [...], "merge": {...}}``."""
  if not path:
    return Manual()
  with open(path, encoding='utf-8') as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: invalid JSON ({e})') from e
  allowed = {'exclude_classes', 'exclude_images', 'merge'}
  if not isinstance(data, dict) or set(data) - allowed:
    raise ValueError(f'{path}: expected an object with keys {sorted(allowed)}, got '
                     f'{sorted(data) if isinstance(data, dict) else type(data).__name__}')
  for key in ('exclude_classes', 'exclude_images'):
    if not isinstance(data.get(key, []), list) or not all(isinstance(s, str) for s in data.get(key, [])):
      raise ValueError(f'{path}: "{key}" must be a list of strings')
  merge = data.get('merge', {})
  if not isinstance(merge, dict) or not all(isinstance(v, str) and v.strip() for v in merge.values()):
    raise ValueError(f'{path}: "merge" must map "source:class name" to a non-empty class name')
  return Manual(tuple(data.get('exclude_classes', [])), tuple(data.get('exclude_images', [])),
                tuple(sorted(merge.items())))


@dataclasses.dataclass(frozen=True)
class SourceClass:
  key: str  # 'source:main name'
  names: tuple
  similarity: float
  nearest_train: str
  target: Optional[str]  # final class name; None when excluded


def score_classes(srcs: Sequence[sources.Source], encode: similarity.EncodeFn,
                  train_classes: Sequence[Sequence[str]], prompting: similarity.Prompting,
                  manual: Manual) -> Dict[str, List[SourceClass]]:
  """Per source, its classes with similarity, nearest training class and final name."""
  merge = dict(manual.merge)
  out, keys = {}, set()
  for src in srcs:
    sims, nearest = similarity.vocabulary_similarity(encode, src.class_names, train_classes, prompting)
    rows, seen = [], {}
    for names, sim, j in zip(src.class_names, sims, nearest):
      seen[names[0]] = seen.get(names[0], 0) + 1  # ImageNet has two 'crane's: the 2nd is 'crane#2'
      key = f'{src.name}:{names[0]}' + (f'#{seen[names[0]]}' if seen[names[0]] > 1 else '')
      keys.add(key)
      target = None if key in manual.exclude_classes else merge.get(key, names[0])
      if target == OTHERS:
        raise ValueError(f'{key}: the name "{OTHERS}" is reserved; merge it under another name')
      rows.append(SourceClass(key, tuple(names), float(sim), train_classes[j][0], target))
    out[src.name] = rows
  unknown = sorted((set(manual.exclude_classes) | set(merge)) - keys)
  if unknown:
    raise ValueError(f'manual curation: unknown classes {unknown[:5]}; expected "source:main name" '
                     f'keys such as {sorted(keys)[:3]}')
  return out


def image_similarity(present: Sequence[int], sims: np.ndarray) -> float:
  """Minimum over the present classes of their similarity to training; NaN with no class."""
  return float(np.min(np.asarray(sims)[list(present)])) if len(present) else float('nan')


def keep_image(image_sim: float, sigma1: float) -> bool:
  """Images whose similarity exceeds sigma1 (or without any class) are dropped."""
  return bool(np.isfinite(image_sim) and image_sim <= sigma1)


def decide(record: dict, classes: List[SourceClass], sigma1: float, sigma2: float,
           manual: Manual) -> dict:
  """The fate of one scanned image: {'keep', 'similarity', 'reason', 'targets' (kept names)}."""
  present = [c for c in record['present'] if classes[c].target is not None]
  sim = image_similarity(present, np.array([c.similarity for c in classes]))
  targets = sorted({classes[c].target for c in present if classes[c].similarity <= sigma2})
  if record['stem'] in manual.exclude_images:
    reason = 'excluded'
  elif not present:
    reason = 'no class'
  elif not keep_image(sim, sigma1):
    reason = 'above sigma1'
  elif not targets:
    reason = 'only others'
  else:
    reason = ''
  return {'keep': not reason, 'similarity': sim, 'reason': reason or 'kept', 'targets': targets}


def final_vocabulary(classes_by_source: Dict[str, List[SourceClass]], used: set) -> List[List[str]]:
  """The used final names in (source, class) order with all their members' synonyms, then others."""
  synonyms: Dict[str, List[str]] = {}
  for rows in classes_by_source.values():
    for c in rows:
      if c.target in used:
        names = synonyms.setdefault(c.target, [c.target])
        names += [n for n in c.names if n not in names]
  return list(synonyms.values()) + [[OTHERS]]


def label_lut(classes: List[SourceClass], vocabulary: List[List[str]], sigma2: float,
              background: str) -> np.ndarray:
  """uint16 (K_src + 2,) table: source label + 2 (BACKGROUND -2, IGNORE -1, classes 0..) -> value."""
  index = {names[0]: k for k, names in enumerate(vocabulary)}
  others = index[OTHERS]
  lut = np.full(len(classes) + 2, IGNORE_VALUE, np.uint16)
  lut[sources.BACKGROUND + 2] = others if background == 'others' else IGNORE_VALUE
  for k, c in enumerate(classes):
    if c.target is not None:  # classes in no kept image (not in the vocabulary) stay ignore
      lut[k + 2] = index.get(c.target, IGNORE_VALUE) if c.similarity <= sigma2 else others
  return lut


def vocabulary_stats(encode: similarity.EncodeFn, vocabulary: List[List[str]],
                     train_classes: Sequence[Sequence[str]], prompting: similarity.Prompting) -> dict:
  """Table-1 statistics of the benchmark's classes (``others`` excluded)."""
  named = [c for c in vocabulary if c[0] != OTHERS]
  sims, _ = similarity.vocabulary_similarity(encode, named, train_classes, prompting)
  return similarity.similarity_stats(sims)


def write_class_file(vocabulary: List[List[str]], path: str) -> None:
  for k, names in enumerate(vocabulary):
    if any(',' in n or not n.strip() for n in names):
      raise ValueError(f'class {k} {names}: names must be non-empty and contain no comma')
  atomic_write(path, ''.join(f'{k}:{",".join(n)}\n' for k, n in enumerate(vocabulary)))


def atomic_write(path: str, text: str) -> None:
  """`text` to `path` atomically (`atomic_io.OutputError` names the path on a full/read-only disk)."""
  from ovsnet_jax import atomic_io  # pylint: disable=g-import-not-at-top
  atomic_io.write_text(text, path)
