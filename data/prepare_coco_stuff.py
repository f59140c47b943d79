"""COCO-Stuff-171: ``stuffthingmaps`` -> ``stuffthingmaps_detectron2`` (ids -> 0..170, 255 ignore).

Input (``stuffthingmaps_trainval2017.zip`` unzipped into ROOT/coco/stuffthingmaps, and the
COCO 2017 images)::

  ROOT/coco/{train2017,val2017}/*.jpg
  ROOT/coco/stuffthingmaps/{train2017,val2017}/*.png   COCO id - 1, 255 unlabeled

Output: ``ROOT/coco/stuffthingmaps_detectron2/{train2017,val2017}/*.png``.

  python data/prepare_coco_stuff.py --root $DETECTRON2_DATASETS
"""
import argparse
import functools
import os

from ovsnet_jax.input.datasets import label_conversion as lc
from ovsnet_jax.input.datasets import prepare_jobs as pj


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--root', default=os.environ.get('DETECTRON2_DATASETS', 'datasets'))
  p.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
  args = p.parse_args(argv)
  base = os.path.join(args.root, 'coco')
  counts = {}
  for split in ('train2017', 'val2017'):
    src = os.path.join(base, 'stuffthingmaps', split)
    if not os.path.isdir(src):
      raise FileNotFoundError(f'{src} does not exist: unzip stuffthingmaps_trainval2017.zip into '
                              f'{os.path.join(base, "stuffthingmaps")} (data/README.md)')
    dst = os.path.join(base, 'stuffthingmaps_detectron2', split)
    os.makedirs(dst, exist_ok=True)
    jobs = [(os.path.join(src, f), os.path.join(dst, f))
            for f in sorted(os.listdir(src)) if f.endswith('.png')]
    counts[split] = pj.run_jobs(
        functools.partial(pj.convert_label_file, convert=lc.coco_stuff_from_stuffthingmaps), jobs,
        args.workers, f'coco_stuff171 {split}')
  return counts


if __name__ == '__main__':
  from ovsnet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_argparse(lambda: print(main()), expected=(ValueError,))  # bad inputs: one line naming the file
