"""Cityscapes: ``*_gtFine_labelIds.png`` (or ``*_gtFine_polygons.json``) -> ``*_gtFine_labelTrainIds.png``.

Same result as cityscapesScripts' ``createTrainIdLabelImgs.py`` (official labelId -> trainId
table; unlabeled and the classes not evaluated -> 255). Input (``gtFine_trainvaltest.zip`` and
``leftImg8bit_trainvaltest.zip`` unzipped into ROOT/cityscapes)::

  ROOT/cityscapes/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png
  ROOT/cityscapes/gtFine/{train,val}/<city>/*_gtFine_labelIds.png, *_gtFine_polygons.json

  python data/prepare_cityscapes.py --root $DETECTRON2_DATASETS [--source polygons]
"""
import argparse
import functools
import os

from ovsnet_jax.input.datasets import label_conversion as lc
from ovsnet_jax.input.datasets import prepare_jobs as pj

_SUFFIX = {'labelIds': '_gtFine_labelIds.png', 'polygons': '_gtFine_polygons.json'}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--root', default=os.environ.get('DETECTRON2_DATASETS', 'datasets'))
  p.add_argument('--source', choices=sorted(_SUFFIX), default='labelIds')
  p.add_argument('--splits', default='train,val')
  p.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
  args = p.parse_args(argv)
  suffix = _SUFFIX[args.source]
  if args.source == 'labelIds':
    fn = functools.partial(pj.convert_label_file, convert=lc.cityscapes_train_ids)
  else:
    fn = pj.convert_polygon_file
  counts = {}
  for split in args.splits.split(','):
    gt = os.path.join(args.root, 'cityscapes', 'gtFine', split)
    if not os.path.isdir(gt):
      raise FileNotFoundError(f'{gt} does not exist: unzip gtFine_trainvaltest.zip into '
                              f'{os.path.join(args.root, "cityscapes")} (data/README.md)')
    jobs = []
    for city in sorted(os.listdir(gt)):
      for f in sorted(os.listdir(os.path.join(gt, city))):
        if f.endswith(suffix):
          stem = f[:-len(suffix)]
          jobs.append((os.path.join(gt, city, f),
                       os.path.join(gt, city, stem + '_gtFine_labelTrainIds.png')))
    counts[split] = pj.run_jobs(fn, jobs, args.workers, f'cityscapes {split}')
  return counts


if __name__ == '__main__':
  from ovsnet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_argparse(lambda: print(main()), expected=(ValueError,))  # bad inputs: one line naming the file
