"""A procedural "shapes" world: things (geometric shapes) on stuff (textured backgrounds).

Images are generated in memory, deterministically from (seed, split, index), so any example can be
read in any order (a random-access source like the real readers). Two splits:
- 'train': only the SEEN classes appear; categories index `class_names('train')` (like COCO-133).
- 'val': every class, SEEN and UNSEEN; categories index `class_names('val')`, with `seen_mask()`
  flagging which ones the training vocabulary contains (the open-vocabulary evaluation).

Colour never gives a class away: every thing and every stuff region gets random colours per
instance, so a class is its geometry and surface pattern (things, `THING_PATTERNS`; `patterned=False`
for geometry alone) or its texture (stuff). `ovsnet_jax.input.shapes_corpus`
captions images of this same world (every class, seen and unseen) to pretrain a CLIP that knows
them all. Panoptic view: backgrounds are "stuff" segments, shapes are "thing" instances (later
shapes occlude earlier ones; fully hidden ones are dropped). `ShapesSemantic` gives the semantic
view of the same images for evaluation.
"""
from typing import Optional, Sequence

import numpy as np

from ovsnet_jax.input import IGNORE_LABEL

# (name, synonyms, seen in training)
THINGS = (
    ('circle', ('disc',), True),
    ('square', (), True),
    ('triangle', (), True),
    ('star', ('hexagram',), True),
    ('cross', ('plus sign',), True),
    ('hexagon', (), False),
    ('ring', ('annulus',), False),
    ('diamond', ('rhombus',), False),
)
# Stuff is told apart by texture (see `stuff_texture`), never by colour.
STUFF = (
    ('sky', (), True),
    ('grass', ('lawn',), True),
    ('wall', ('brick wall',), True),
    ('sand', (), False),
    ('water', (), False),
)
SPLITS = ('train', 'val')
_SPLIT_ID = {'train': 0, 'val': 1}
THING_RADIUS = (1 / 7, 1 / 3.5)  # a scene's thing radius range, fractions of the image side
MIN_CONTRAST = 90.0  # minimum RGB distance between a thing's colour and its background's mean
# Each thing class's surface pattern (`patterned=True`, the default): two random colours in a pattern
# typical of the class, as real categories have typical surfaces (a zebra's stripes), so a thing is its
# shape AND its pattern, never its colour. Every pattern is its own mirror image up to a random phase,
# so flips (the CLIP pretraining augmentation) never turn one class's pattern into another's.
THING_PATTERNS = {'circle': 'solid', 'square': 'checker', 'triangle': 'hstripes', 'star': 'dots',
                  'cross': 'crosshatch', 'hexagon': 'vstripes', 'ring': 'zigzag', 'diamond': 'grid'}


def _classes(split: str):
  if split not in SPLITS:
    raise ValueError(f'shapes: split must be one of {SPLITS}, got {split!r}')
  all_classes = THINGS + STUFF
  return all_classes if split == 'val' else tuple(c for c in all_classes if c[2])


def class_names(split: str) -> list[list[str]]:
  """Vocabulary of a split, in `vocab.load_class_names` format: per class [name, *synonyms]."""
  return [[name, *syns] for name, syns, _ in _classes(split)]


def seen_mask(split: str = 'val') -> list[bool]:
  """Per class of `split`, whether it is in the training vocabulary."""
  return [c[2] for c in _classes(split)]


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


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Two random RGB colours at least 60 apart (a texture must stay visible)."""
  c1 = rng.uniform(0, 255, 3)
  for _ in range(20):
    c2 = rng.uniform(0, 255, 3)
    if np.linalg.norm(c1 - c2) >= 60:
      break
  return c1, c2


def stuff_texture(name: str, rng: np.random.Generator, height: int, width: int,
                  scale: float) -> np.ndarray:
  """(height, width, 3) float texture of stuff class `name` in two random colours.

  sky: smooth vertical gradient; grass: thin vertical streaks; wall: bricks; sand: speckle;
  water: horizontal waves. `scale` is the image size / 64 (texture periods grow with it).
  """
  c1, c2 = _two_colours(rng)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
  if name == 'sky':
    mix = np.broadcast_to(np.linspace(0, 1, height)[:, None], (height, width))
  elif name == 'grass':
    mix = np.repeat(rng.uniform(size=(1, -(-width // max(1, round(scale))))), max(1, round(scale)),
                    axis=1)[:, :width] ** 2 + np.zeros((height, 1))
  elif name == 'wall':
    bh = rng.uniform(6, 9) * scale
    row = np.floor((yy + rng.uniform(0, bh)) / bh)
    shift = (row % 2) * bh
    mix = (((yy + rng.uniform(0, bh)) % bh < 1.5 * scale)
           | ((xx + shift) % (2 * bh) < 1.5 * scale)).astype(np.float64)
  elif name == 'sand':
    mix = (rng.uniform(size=(height, width)) < 0.3).astype(np.float64)
  elif name == 'water':
    period = rng.uniform(5, 8) * scale
    mix = 0.5 + 0.5 * np.sin(2 * np.pi * yy / period
                             + 1.5 * np.sin(2 * np.pi * xx / (3 * period) + rng.uniform(0, 7)))
  else:
    raise ValueError(f'stuff_texture: unknown stuff class {name!r}')
  image = c1 * (1 - mix[..., None]) + c2 * mix[..., None]
  return image + rng.normal(0, 4, size=image.shape)


def _thing_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
  """A random colour at least MIN_CONTRAST from `background` (RGB mean of the region behind)."""
  for _ in range(20):
    colour = rng.uniform(0, 255, 3)
    if np.linalg.norm(colour - background) >= MIN_CONTRAST:
      break
  return colour


def pattern_mix(pattern: str, rng: np.random.Generator, size: int) -> np.ndarray:
  """float (size, size) in {0, 1}: where a thing's second colour shows, for surface `pattern`.

  Period 3.5-5 px at 64 px (scaled with `size`), random phase.
  """
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
  p = rng.uniform(3.5, 5) * size / 64
  oy, ox = rng.uniform(0, 2 * p, 2)
  y, x = (yy + oy) % p < p / 2, (xx + ox) % p < p / 2
  if pattern == 'solid':
    mix = np.zeros((size, size), bool)
  elif pattern == 'checker':
    mix = y ^ x
  elif pattern == 'hstripes':
    mix = y
  elif pattern == 'vstripes':
    mix = x
  elif pattern == 'dots':
    mix = ((yy + oy) % p < p / 2.5) & ((xx + ox) % p < p / 2.5)
  elif pattern == 'crosshatch':  # both diagonals
    mix = ((yy + xx + oy) % (1.4 * p) < 0.45 * p) | ((yy - xx + 4 * size + ox) % (1.4 * p) < 0.45 * p)
  elif pattern == 'zigzag':  # horizontal chevrons: rows displaced by a triangle wave along x
    tri = np.abs((xx + ox) % (2 * p) - p)  # 0..p
    mix = (yy + tri + oy) % p < p / 2
  elif pattern == 'grid':
    mix = ((yy + oy) % p < 1.2 * size / 64) | ((xx + ox) % p < 1.2 * size / 64)
  else:
    raise ValueError(f'pattern_mix: unknown pattern {pattern!r}, expected one of '
                     f'{sorted(set(THING_PATTERNS.values()))}')
  return mix.astype(np.float64)


def render_scene(rng: np.random.Generator, size: int, stuff: Sequence[str],
                 things: Sequence[str], split_row: Optional[int] = None,
                 radius: tuple[float, float] = THING_RADIUS, patterned: bool = True):
  """Draws one image of the world.

  Args:
    rng: the generator all randomness comes from.
    size: image side in pixels.
    stuff: one or two stuff names (top to bottom; two are split at `split_row`).
    things: thing names, drawn in order (later ones occlude earlier ones).
    split_row: the row where the second stuff region starts (default: random).
    radius: thing radius range as fractions of `size`.
    patterned: things wear their class's surface pattern (`THING_PATTERNS`) in two random
      colours; False: one random colour per thing (its shape alone tells its class).

  Returns:
    (image uint8 (size, size, 3), segment ids int32 (size, size), [(segment id, name)] of the
    visible segments: stuff first, then things).
  """
  s, scale = size, size / 64
  image = np.zeros((s, s, 3), np.float64)
  ids = np.zeros((s, s), np.int32)
  if len(stuff) == 2:
    split_row = int(rng.integers(s // 4, 3 * s // 4)) if split_row is None else split_row
    rows = [(0, split_row), (split_row, s)]
  else:
    rows = [(0, s)]
  segments = []
  for seg_id, ((top, bottom), name) in enumerate(zip(rows, stuff), start=1):
    image[top:bottom] = stuff_texture(name, rng, bottom - top, s, scale)
    ids[top:bottom] = seg_id
    segments.append((seg_id, name))
  for k, name in enumerate(things):
    r = rng.uniform(radius[0] * s, radius[1] * s)
    cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)
    mask = shape_mask(name, s, cx, cy, r)
    colour = _thing_colour(rng, image[mask].mean(0) if mask.any() else image.mean((0, 1)))
    if patterned:
      second = _thing_colour(rng, colour)
      mix = pattern_mix(THING_PATTERNS[name], rng, s)[mask][:, None]  # (N, 1)
      colour = colour * (1 - mix) + second * mix
    image[mask] = colour + rng.normal(0, 4, size=(int(mask.sum()), 3))
    seg_id = len(rows) + 1 + k
    ids[mask] = seg_id
    segments.append((seg_id, name))
  present = set(np.unique(ids).tolist())
  segments = [seg for seg in segments if seg[0] in present]
  return np.clip(image, 0, 255).astype(np.uint8), ids, segments


class ShapesPanoptic:
  """Panoptic reader: `ds[i] -> {'image', 'segment_ids', 'segments', 'file_name'}`."""

  def __init__(self, split: str = 'train', num_images: int = 1000, image_size: int = 64,
               seed: int = 0, max_shapes: int = 4, patterned: bool = True,
               radius: tuple[float, float] = THING_RADIUS):
    self.split = split
    self.patterned = patterned
    self.radius = tuple(radius)  # thing radius range, fractions of image_size (`render_scene`)
    self.classes = _classes(split)
    self.class_names = class_names(split)
    self.num_images, self.image_size = num_images, image_size
    self.seed, self.max_shapes = seed, max_shapes
    self._things = [i for i, c in enumerate(self.classes) if c in THINGS]
    self._stuff = [i for i, c in enumerate(self.classes) if c in STUFF]
    self._index = {c[0]: i for i, c in enumerate(self.classes)}

  def __len__(self) -> int:
    return self.num_images

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.num_images:
      raise IndexError(f'shapes/{self.split}: index {index} out of range [0, {self.num_images})')
    rng = np.random.default_rng([self.seed, _SPLIT_ID[self.split], index])
    stuff = [self.classes[int(i)][0] for i in rng.choice(self._stuff, 1 + int(rng.uniform() < 0.5))]
    things = [self.classes[int(i)][0]
              for i in rng.choice(self._things, int(rng.integers(1, self.max_shapes + 1)))]
    image, ids, segs = render_scene(rng, self.image_size, stuff, things, radius=self.radius,
                                    patterned=self.patterned)
    segments = [{'id': i, 'category': self._index[name], 'iscrowd': 0} for i, name in segs]
    return {'image': image, 'segment_ids': ids, 'segments': segments,
            'file_name': f'shapes/{self.split}/{index:06d}.png'}


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
