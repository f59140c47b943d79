"""ADE20K-847: the full ADE20K 2021 release -> ``ADE20K_2021_17_01/{images,annotations}_detectron2``.

Input (``ADE20K_2021_17_01.zip`` from https://groups.csail.mit.edu/vision/datasets/ADE20K/,
unzipped in ROOT)::

  ROOT/ADE20K_2021_17_01/index_ade20k.pkl     'folder' and 'filename' of every image
  ROOT/ADE20K_2021_17_01/images/ADE/{training,validation}/<scene>/ADE_*.jpg, ADE_*_seg.png

Output (images with short side > 512 downscaled to 512, bilinear / nearest; labels 0..846 and
65535 ignore, the class table ``data/ade20k_847_ids.json``)::

  ROOT/ADE20K_2021_17_01/images_detectron2/{training,validation}/ADE_*.jpg
  ROOT/ADE20K_2021_17_01/annotations_detectron2/{training,validation}/ADE_*.tif

  python data/prepare_ade20k_847.py --root $DETECTRON2_DATASETS
"""
import argparse
import functools
import json
import os
import io
import pickle

import numpy as np

from ovsnet_jax.input.datasets import prepare_jobs as pj

IDS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ade20k_847_ids.json')

# The only globals the index may name: numpy's array/scalar reconstructors (numpy 1.x and 2.x
# module names). Plain containers, strings and numbers need none.
_NUMPY_GLOBALS = {
    (module, name): obj
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray')
    for name, obj in (('_reconstruct', np.ndarray.__reduce__(np.zeros(0))[0]),
                      ('scalar', np.float64(0).__reduce__()[0]))
} | {('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype}


class _IndexUnpickler(pickle.Unpickler):
  """Builds dicts, lists, tuples, strings, numbers and numpy arrays; refuses every other global."""

  def find_class(self, module, name):
    if (module, name) in _NUMPY_GLOBALS:
      return _NUMPY_GLOBALS[(module, name)]
    raise pickle.UnpicklingError(f'refusing {module}.{name}: the ADE20K index holds only containers, '
                                 'strings, numbers and numpy arrays')


def read_index(path: str) -> dict:
  """`index_ade20k.pkl` without running code from it (`_IndexUnpickler`); ValueError names the file."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    index = _IndexUnpickler(io.BytesIO(data)).load()
  except Exception as e:  # pylint: disable=broad-except (a damaged pickle raises many types)
    raise ValueError(f'{path}: not a valid ADE20K index ({type(e).__name__}: {e})') from e
  if not isinstance(index, dict) or not all(k in index for k in ('folder', 'filename')):
    raise ValueError(f"{path}: expected a dict with 'folder' and 'filename' lists, got "
                     f'{type(index).__name__}{" with keys " + str(sorted(index)[:10]) if isinstance(index, dict) else ""}')
  return index


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--root', default=os.environ.get('DETECTRON2_DATASETS', 'datasets'))
  p.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
  args = p.parse_args(argv)
  base = os.path.join(args.root, 'ADE20K_2021_17_01')
  index_file = os.path.join(base, 'index_ade20k.pkl')
  if not os.path.isfile(index_file):
    raise FileNotFoundError(f'{index_file} does not exist: unzip ADE20K_2021_17_01.zip into '
                            f'{args.root} (data/README.md)')
  index = read_index(index_file)  # a pickle, read without running any code from it
  with open(IDS_FILE) as f:
    class_ids = json.load(f)
  jobs = {'training': [], 'validation': []}
  for folder, name in zip(index['folder'], index['filename']):
    split = 'validation' if name.split('_')[1] == 'val' else 'training'
    # 'folder' starts with 'ADE20K_2021_17_01/images/ADE/...': relative to ROOT.
    image = os.path.join(args.root, folder, name)
    seg = image[:-len('.jpg')] + '_seg.png'
    for path in (image, seg):
      if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} (listed in {index_file}) does not exist')
    jobs[split].append((image, seg, os.path.join(base, 'images_detectron2', split, name),
                        os.path.join(base, 'annotations_detectron2', split,
                                     name[:-len('.jpg')] + '.tif')))
  counts = {}
  for split, split_jobs in jobs.items():
    for sub in ('images_detectron2', 'annotations_detectron2'):
      os.makedirs(os.path.join(base, sub, split), exist_ok=True)
    counts[split] = pj.run_jobs(functools.partial(pj.ade847_job, class_ids=class_ids),
                                split_jobs, args.workers, f'ade847 {split}')
  return counts


if __name__ == '__main__':
  from ovsnet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_argparse(lambda: print(main()), expected=(ValueError,))  # bad inputs: one line naming the file
