"""Captioned images of the shapes world: the web-like corpus a CLIP of this world is trained on.

Every image is drawn by `shapes.render_scene` and captioned, from varied templates, with the
things and stuff it shows, over EVERY class of the world (seen and held out of the segmenter's
training, as web data covers COCO's classes and more). Deterministic from (seed, split, index),
random access. Three kinds of image, so that both single concepts and scenes are described:
- 'thing' (55%): one thing on one stuff region, "a photo of a small star on grass.";
- 'stuff' (25%): one stuff region only, "a photo of water.";
- 'scene' (20%): 2-3 things on one or two stuff regions, "a circle and a ring on sand and sky.".
Colours are random per instance (`shapes`), so captions are about shape, surface pattern and texture
only.
"""
import numpy as np

from ovsnet_jax.input import shapes

SPLITS = {'train': 10, 'test': 11}  # stream ids, disjoint from the segmentation splits (0, 1)
KIND_PROBS = (('thing', 0.55), ('stuff', 0.25), ('scene', 0.2))
THING_TEMPLATES = (
    'a photo of a {t}.', 'a photo of a {size} {t}.', 'a {t}.', 'There is a {t} in the scene',
    'a photo of a {t} in the scene', 'This is a photo of a {size} {t}.', 'a {t} on {s}.',
    'a photo of a {t} on {s}.', 'a {size} {t} in front of {s}.', 'There is a {size} {t} in the scene.',
)
STUFF_TEMPLATES = ('a photo of {s}.', 'a photo of a {s}.', '{s}.', 'There is {s} in the scene',
                   'This is a photo of {s}', 'a photo of the {s}.')
SCENE_TEMPLATES = ('a photo of {things}.', '{things} on {s}.', 'There is {things} in the scene',
                   'a photo of {things} on {s}.', '{things}.')
THING_NAMES = tuple(t[0] for t in shapes.THINGS)
STUFF_NAMES = tuple(s[0] for s in shapes.STUFF)
_SYNONYMS = {name: (name, *syns) for name, syns, _ in shapes.THINGS + shapes.STUFF}


def _name(rng: np.random.Generator, cls: str) -> str:
  """The class name, or one of its synonyms (a third of the time, when it has any)."""
  names = _SYNONYMS[cls]
  return names[0] if len(names) == 1 or rng.uniform() < 2 / 3 else names[int(rng.integers(1, len(names)))]


def _join(parts: list[str]) -> str:
  return parts[0] if len(parts) == 1 else ', '.join(parts[:-1]) + ' and ' + parts[-1]


def _size_word(r: float) -> str:
  return 'small' if r < 0.22 else ('large' if r > 0.28 else 'medium')


class ShapesCaptions:
  """`ds[i] -> {'image' uint8 (S, S, 3), 'caption' str, 'kind', 'things', 'stuff'}`.

  Attributes:
    split: 'train' (the pretraining corpus) or 'test' (held-out images for zero-shot checks).
    num_images, image_size, seed: size of the corpus, image side, and the world's seed.
  """

  def __init__(self, split: str = 'train', num_images: int = 10000, image_size: int = 64,
               seed: int = 0, patterned: bool = True):
    if split not in SPLITS:
      raise ValueError(f'shapes_corpus: split must be one of {sorted(SPLITS)}, got {split!r}')
    self.split, self.num_images, self.image_size, self.seed = split, num_images, image_size, seed
    self.patterned = patterned

  def __len__(self) -> int:
    return self.num_images

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.num_images:
      raise IndexError(f'shapes_corpus/{self.split}: index {index} out of range [0, {self.num_images})')
    rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
    kinds, probs = zip(*KIND_PROBS)
    kind = kinds[int(rng.choice(len(kinds), p=probs))]
    if kind == 'thing':
      return self.example(rng, 'thing', [str(rng.choice(THING_NAMES))], [str(rng.choice(STUFF_NAMES))])
    if kind == 'stuff':
      return self.example(rng, 'stuff', [], [str(rng.choice(STUFF_NAMES))])
    things = [str(t) for t in rng.choice(THING_NAMES, int(rng.integers(2, 4)))]
    stuff = [str(s) for s in rng.choice(STUFF_NAMES, 1 + int(rng.uniform() < 0.4), replace=False)]
    return self.example(rng, 'scene', things, stuff)

  def example(self, rng: np.random.Generator, kind: str, things: list[str], stuff: list[str]) -> dict:
    """Renders and captions one image of `kind` with the given class names."""
    r = float(rng.uniform(1 / 6, 1 / 3))  # a lone thing is drawn large: its shape, not the stuff, is the topic
    radius = (r, r) if kind == 'thing' else shapes.THING_RADIUS
    image, _, segs = shapes.render_scene(rng, self.image_size, stuff, things, radius=radius,
                                         patterned=self.patterned)
    visible = [name for _, name in segs]
    vis_things = [t for t in things if t in visible[len(stuff):]] or things[-1:]
    stuff_text = _join([_name(rng, s) for s in stuff])
    if kind == 'thing':
      template = THING_TEMPLATES[int(rng.integers(len(THING_TEMPLATES)))]
      caption = template.format(t=_name(rng, things[0]), s=stuff_text, size=_size_word(r))
    elif kind == 'stuff':
      caption = STUFF_TEMPLATES[int(rng.integers(len(STUFF_TEMPLATES)))].format(s=stuff_text)
    else:
      names = _join([f'a {_name(rng, t)}' for t in dict.fromkeys(vis_things)])
      caption = SCENE_TEMPLATES[int(rng.integers(len(SCENE_TEMPLATES)))].format(things=names, s=stuff_text)
    return {'image': image, 'caption': caption, 'kind': kind, 'things': vis_things, 'stuff': stuff}


def zero_shot_set(per_class: int, image_size: int, seed: int = 0, patterned: bool = True):
  """Held-out single-concept images for zero-shot classification.

  Per thing class `per_class` images of that thing alone on random stuff (labelled the thing),
  per stuff class `per_class` images of that stuff alone. `patterned` as `shapes.render_scene`.

  Returns:
    (images uint8 (N, S, S, 3), labels int32 (N,) indexing `shapes.class_names('val')`).
  """
  names = [c[0] for c in shapes.THINGS + shapes.STUFF]
  images, labels = [], []
  for k, name in enumerate(names):
    for i in range(per_class):
      rng = np.random.default_rng([seed, SPLITS['test'], 1000 + k, i])
      if name in THING_NAMES:
        ex = ShapesCaptions('test', 1, image_size, seed, patterned).example(
            rng, 'thing', [name], [str(rng.choice(STUFF_NAMES))])
      else:
        ex = ShapesCaptions('test', 1, image_size, seed, patterned).example(rng, 'stuff', [], [name])
      images.append(ex['image'])
      labels.append(k)
  return np.stack(images), np.asarray(labels, np.int32)
