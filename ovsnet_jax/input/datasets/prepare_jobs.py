"""File-level jobs of the preparation scripts (data/prepare_*.py), run in worker processes.

Each job reads official files and writes the detectron2-layout files, using the pure array
conversions of ``label_conversion``; every failure names the file.
"""
import json
import shutil

import numpy as np
from PIL import Image

from ovsnet_jax.input.datasets import label_conversion as lc


def convert_label_file(job: tuple[str, str], convert) -> None:
  """Reads the label file ``job[0]``, applies ``convert``, writes ``job[1]`` (format by suffix)."""
  src, dst = job
  try:
    with Image.open(src) as im:
      label = np.asarray(im)
    out = convert(label)
  except (OSError, ValueError) as e:
    raise ValueError(f'{src}: cannot convert ({e})') from e
  Image.fromarray(out).save(dst)


def run_jobs(fn, jobs: list, workers: int, desc: str) -> int:
  """Runs ``fn(job)`` for every job, in ``workers`` processes (1 = in this process)."""
  import multiprocessing
  import tqdm
  if workers <= 1:
    for job in tqdm.tqdm(jobs, desc=desc):
      fn(job)
  else:
    with multiprocessing.Pool(workers) as pool:
      for _ in tqdm.tqdm(pool.imap_unordered(fn, jobs, chunksize=32), total=len(jobs), desc=desc):
        pass
  return len(jobs)


def convert_polygon_file(job: tuple[str, str]) -> None:
  """Rasterises the Cityscapes polygons JSON ``job[0]`` to the trainId PNG ``job[1]``."""
  src, dst = job
  with open(src, encoding='utf-8') as f:
    try:
      polygons = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{src}: invalid JSON ({e})') from e
  Image.fromarray(lc.cityscapes_train_ids_from_polygons(polygons, src)).save(dst)


def _read_palette_indices(path: str) -> np.ndarray:
  try:
    with Image.open(path) as im:
      return np.asarray(im)
  except OSError as e:
    raise ValueError(f'{path}: cannot decode ({e})') from e


def voc_job(job: tuple[str, str, str, str, str]) -> None:
  """(image, SegmentationClass png, out image, out pascal21 png, out pascal20 png)."""
  image, ann, out_image, out21, out20 = job
  shutil.copy2(image, out_image)
  label = _read_palette_indices(ann)
  try:
    Image.fromarray(lc.voc21_from_segmentation_class(label)).save(out21)
    Image.fromarray(lc.voc20_from_segmentation_class(label)).save(out20)
  except ValueError as e:
    raise ValueError(f'{ann}: {e}') from e


def load_label_map(mat_path: str) -> np.ndarray:
  """The uint16 ``LabelMap`` of a Pascal Context ``trainval/<id>.mat``."""
  import scipy.io
  try:
    label_map = scipy.io.loadmat(mat_path)['LabelMap']
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f'{mat_path}: cannot read the LabelMap ({e!r})') from e
  if not np.issubdtype(label_map.dtype, np.integer) or label_map.min() < 0 or \
      label_map.max() > 459:
    raise ValueError(f'{mat_path}: expected LabelMap values 0..459, got dtype {label_map.dtype} '
                     f'range {label_map.min()}..{label_map.max()}')
  return label_map.astype(np.uint16)


def context_job(job: tuple[str, str, str, str, str]) -> None:
  """(image, trainval .mat, out image, out ctx59 png, out ctx459 tif)."""
  image, mat, out_image, out59, out459 = job
  label_map = load_label_map(mat)
  shutil.copy2(image, out_image)
  Image.fromarray(lc.ctx59_from_label_map(label_map)).save(out59)
  Image.fromarray(lc.ctx459_from_label_map(label_map)).save(out459)


def ade847_job(job: tuple[str, str, str, str], class_ids: list[int]) -> None:
  """(image, _seg.png, out image jpg, out label tif): short side capped at 512, as FC-CLIP."""
  image_path, seg_path, out_image, out_label = job
  try:
    with Image.open(image_path) as im:
      image = np.asarray(im.convert('RGB'))
    with Image.open(seg_path) as im:
      seg = np.asarray(im.convert('RGB'))
  except OSError as e:
    raise ValueError(f'{image_path} / {seg_path}: cannot decode ({e})') from e
  if seg.shape[:2] != image.shape[:2]:
    raise ValueError(
        f'{seg_path}: size {seg.shape[:2]} differs from {image_path} {image.shape[:2]}')
  label = lc.ade847_from_full_seg(seg, class_ids)  # (H, W) uint16
  hw = lc.ade847_resized_size(*image.shape[:2])
  if hw is not None:
    image = lc.resize_bilinear(image, hw)
    label = lc.resize_nearest(label, hw)
  Image.fromarray(image).save(out_image)  # JPEG at Pillow's default quality, as FC-CLIP
  Image.fromarray(label).save(out_label)
