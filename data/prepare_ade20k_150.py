"""ADE20K-150: ``annotations`` -> ``annotations_detectron2`` (labels x - 1, 0 -> 255 ignore).

Input (SceneParsing ``ADEChallengeData2016.zip`` unzipped in ROOT)::

  ROOT/ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
  ROOT/ADEChallengeData2016/annotations/{training,validation}/ADE_*.png   0 = other, 1..150

Output: ``ROOT/ADEChallengeData2016/annotations_detectron2/{training,validation}/ADE_*.png``.

  python data/prepare_ade20k_150.py --root $DETECTRON2_DATASETS
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
  base = os.path.join(args.root, 'ADEChallengeData2016')
  counts = {}
  for split in ('training', 'validation'):
    src = os.path.join(base, 'annotations', split)
    if not os.path.isdir(src):
      raise FileNotFoundError(f'{src} does not exist: unzip ADEChallengeData2016.zip into '
                              f'{args.root} (data/README.md)')
    dst = os.path.join(base, 'annotations_detectron2', split)
    os.makedirs(dst, exist_ok=True)
    jobs = [(os.path.join(src, f), os.path.join(dst, f))
            for f in sorted(os.listdir(src)) if f.endswith('.png')]
    counts[split] = pj.run_jobs(
        functools.partial(pj.convert_label_file, convert=lc.ade150_from_scene_parsing), jobs,
        args.workers, f'ade150 {split}')
  return counts


if __name__ == '__main__':
  from ovsnet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_argparse(lambda: print(main()), expected=(ValueError,))  # bad inputs: one line naming the file
