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
import pickle

from ovsnet_jax.input.datasets import prepare_jobs as pj

IDS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ade20k_847_ids.json')


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
  with open(index_file, 'rb') as f:
    index = pickle.load(f)  # the official index (a pickle: only open the file you downloaded)
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
  print(main())
