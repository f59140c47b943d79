"""Pascal VOC 2012: ``VOCdevkit/VOC2012`` -> ``pascal_voc_d2`` (PAS-21 and PAS-20 labels).

Input (``VOCtrainval_11-May-2012.tar`` extracted in ROOT)::

  ROOT/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
  ROOT/VOCdevkit/VOC2012/SegmentationClass/<id>.png      palette: 0 background, 1..20, 255 border
  ROOT/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt

Output::

  ROOT/pascal_voc_d2/images/{training,validation}/<id>.jpg
  ROOT/pascal_voc_d2/annotations_pascal21/{training,validation}/<id>.png   unchanged indices
  ROOT/pascal_voc_d2/annotations_pascal20/{training,validation}/<id>.png   background -> 255, x - 1

  python data/prepare_pascal_voc.py --root $DETECTRON2_DATASETS
"""
import argparse
import os

from ovsnet_jax.input.datasets import prepare_jobs as pj


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--root', default=os.environ.get('DETECTRON2_DATASETS', 'datasets'))
  p.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
  args = p.parse_args(argv)
  voc = os.path.join(args.root, 'VOCdevkit', 'VOC2012')
  out = os.path.join(args.root, 'pascal_voc_d2')
  counts = {}
  for split, d in (('train', 'training'), ('val', 'validation')):
    list_file = os.path.join(voc, 'ImageSets', 'Segmentation', f'{split}.txt')
    if not os.path.isfile(list_file):
      raise FileNotFoundError(f'{list_file} does not exist: extract VOCtrainval_11-May-2012.tar '
                              f'into {args.root} (data/README.md)')
    with open(list_file) as f:
      ids = [line.strip() for line in f if line.strip()]
    dirs = [os.path.join(out, sub, d) for sub in ('images', 'annotations_pascal21',
                                                   'annotations_pascal20')]
    for x in dirs:
      os.makedirs(x, exist_ok=True)
    jobs = []
    for i in ids:
      image = os.path.join(voc, 'JPEGImages', f'{i}.jpg')
      ann = os.path.join(voc, 'SegmentationClass', f'{i}.png')
      for path in (image, ann):
        if not os.path.isfile(path):
          raise FileNotFoundError(f'{path} (listed in {list_file}) does not exist')
      jobs.append((image, ann, os.path.join(dirs[0], f'{i}.jpg'),
                   os.path.join(dirs[1], f'{i}.png'), os.path.join(dirs[2], f'{i}.png')))
    counts[d] = pj.run_jobs(pj.voc_job, jobs, args.workers, f'voc {split}')
  return counts


if __name__ == '__main__':
  from ovsnet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_argparse(lambda: print(main()), expected=(ValueError,))  # bad inputs: one line naming the file
