"""A procedural "shapes" dataset: coloured geometric shapes on textured backgrounds.

Images are generated in memory, deterministically from (seed, split, index), so any example can be
read in any order (a random-access source like the real readers). Two splits:
- 'train': only the SEEN classes appear; categories index `class_names('train')` (like COCO-133).
- 'val': every class, SEEN and UNSEEN; categories index `class_names('val')`, with `seen_mask()`
  flagging which ones the training vocabulary contains (the open-vocabulary evaluation).

Each shape class has its own base colour (jittered per instance) so that a tiny randomly
initialised model can learn the seen classes on CPU in minutes; the shapes themselves differ in
geometry too. Panoptic view: backgrounds are "stuff" segments, shapes are "thing" instances
(later shapes occlude earlier ones; fully hidden ones are dropped). `ShapesSemantic` gives the
semantic view of the same images for evaluation.
"""
from typing import Sequence

import numpy as np

from ovsnet_jax.input import IGNORE_LABEL

# (name, synonyms, base RGB colour, seen in training)
THINGS = (
    ('circle', ('disc',), (220, 40, 40), True),
    ('square', (), (40, 80, 220), True),
    ('triangle', (), (240, 200, 30), True),
    ('star', ('hexagram',), (200, 60, 200), True),
    ('cross', ('plus sign',), (30, 200, 200), True),
    ('hexagon', (), (250, 130, 20), False),
    ('ring', ('annulus',), (120, 60, 20), False),
    ('diamond', ('rhombus',), (20, 20, 20), False),
)
STUFF = (
    ('sky', (), (150, 200, 250), True),
    ('grass', ('lawn',), (60, 150, 60), True),
    ('sand', (), (210, 190, 140), False),
)
SPLITS = ('train', 'val')
_SPLIT_ID = {'train': 0, 'val': 1}


def _classes(split: str):
  if split not in SPLITS:
    raise ValueError(f'shapes: split must be one of {SPLITS}, got {split!r}')
  all_classes = THINGS + STUFF
  return all_classes if split == 'val' else tuple(c for c in all_classes if c[3])


def class_names(split: str) -> list[list[str]]:
  """Vocabulary of a split, in `vocab.load_class_names` format: per class [name, *synonyms]."""
  return [[name, *syns] for name, syns, _, _ in _classes(split)]


def seen_mask(split: str = 'val') -> list[bool]:
  """Per class of `split`, whether it is in the training vocabulary."""
  return [c[3] for c in _classes(split)]


def write_class_file(path: str, split: str) -> None:
  """Writes the split's vocabulary as `idx:name,syn,...` lines (fc-clip / vocab format)."""
  with open(path, 'w') as f:
    for i, names in enumerate(class_names(split)):
      f.write(f'{i}:{",".join(names)}\n')


def _convex(yy, xx, vertices):
  """Inside test for a counter-clockwise convex polygon (in image coordinates x right, y down)."""
  inside = np.ones(yy.shape, bool)
  for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
    inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
  return inside


def _regular(cx, cy, r, n, phase):
  angles = phase + 2 * np.pi * np.arange(n) / n
  return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], -1)


def shape_mask(name: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
  """bool (size, size) mask of shape `name` centred at (cx, cy) with radius r (pixels)."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
  dx, dy = xx - cx, yy - cy
  if name == 'circle':
    return dx**2 + dy**2 <= r**2
  if name == 'square':
    return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
  if name == 'diamond':
    return np.abs(dx) + np.abs(dy) <= r
  if name == 'ring':
    d2 = dx**2 + dy**2
    return (d2 <= r**2) & (d2 >= (0.55 * r)**2)
  if name == 'cross':
    return ((np.abs(dx) <= r) & (np.abs(dy) <= 0.3 * r)) | ((np.abs(dy) <= r) & (np.abs(dx) <= 0.3 * r))
  if name == 'triangle':
    return _convex(yy, xx, _regular(cx, cy, r, 3, -np.pi / 2))
  if name == 'hexagon':
    return _convex(yy, xx, _regular(cx, cy, r, 6, 0.0))
  if name == 'star':
    return (_convex(yy, xx, _regular(cx, cy, r, 3, -np.pi / 2))
            | _convex(yy, xx, _regular(cx, cy, r, 3, np.pi / 2)))
  raise ValueError(f'shape_mask: unknown shape {name!r}')


class ShapesPanoptic:
  """Panoptic reader: `ds[i] -> {'image', 'segment_ids', 'segments', 'file_name'}`."""

  def __init__(self, split: str = 'train', num_images: int = 1000, image_size: int = 64,
               seed: int = 0, max_shapes: int = 4):
    self.split = split
    self.classes = _classes(split)
    self.class_names = class_names(split)
    self.num_images, self.image_size = num_images, image_size
    self.seed, self.max_shapes = seed, max_shapes
    self._things = [i for i, c in enumerate(self.classes) if c in THINGS]
    self._stuff = [i for i, c in enumerate(self.classes) if c in STUFF]

  def __len__(self) -> int:
    return self.num_images

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.num_images:
      raise IndexError(f'shapes/{self.split}: index {index} out of range [0, {self.num_images})')
    rng = np.random.default_rng([self.seed, _SPLIT_ID[self.split], index])
    s = self.image_size
    image = np.zeros((s, s, 3), np.float64)
    ids = np.zeros((s, s), np.int32)
    segments = []
    # Background: one stuff class, or two split at a random row.
    split_row = int(rng.integers(s // 4, 3 * s // 4)) if rng.uniform() < 0.5 else s
    rows = [(0, split_row), (split_row, s)] if split_row < s else [(0, s)]
    for seg_id, (top, bottom) in enumerate(rows, start=1):
      cls = int(rng.choice(self._stuff))
      colour = np.asarray(self.classes[cls][2], np.float64)
      image[top:bottom] = colour + rng.normal(0, 12, size=(bottom - top, s, 3))
      ids[top:bottom] = seg_id
      segments.append({'id': seg_id, 'category': cls, 'iscrowd': 0})
    for k in range(int(rng.integers(1, self.max_shapes + 1))):
      cls = int(rng.choice(self._things))
      r = rng.uniform(s / 8, s / 4)
      cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)
      mask = shape_mask(self.classes[cls][0], s, cx, cy, r)
      colour = np.asarray(self.classes[cls][2], np.float64) + rng.uniform(-25, 25, size=3)
      image[mask] = colour
      seg_id = len(rows) + 1 + k
      ids[mask] = seg_id
      segments.append({'id': seg_id, 'category': cls, 'iscrowd': 0})
    present = set(np.unique(ids).tolist())
    segments = [seg for seg in segments if seg['id'] in present]
    return {'image': np.clip(image, 0, 255).astype(np.uint8), 'segment_ids': ids,
            'segments': segments, 'file_name': f'shapes/{self.split}/{index:06d}.png'}


class ShapesSemantic:
  """Semantic view of a `ShapesPanoptic`: `ds[i] -> {'image', 'sem_seg', 'file_name'}`."""

  def __init__(self, panoptic: ShapesPanoptic):
    self.panoptic = panoptic
    self.class_names = panoptic.class_names

  def __len__(self) -> int:
    return len(self.panoptic)

  def __getitem__(self, index: int) -> dict:
    ex = self.panoptic[index]
    sem = np.full(ex['segment_ids'].shape, IGNORE_LABEL, np.int32)
    for seg in ex['segments']:
      sem[ex['segment_ids'] == seg['id']] = seg['category']
    return {'image': ex['image'], 'sem_seg': sem, 'file_name': ex['file_name']}


def get_shapes(split: str, semantic: bool = False, **kwargs) -> Sequence:
  """The shapes reader of `split` (panoptic, or its semantic view)."""
  ds = ShapesPanoptic(split, **kwargs)
  return ShapesSemantic(ds) if semantic else ds
