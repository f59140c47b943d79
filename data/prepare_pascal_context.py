"""Pascal Context: ``VOCdevkit/VOC2010`` -> ``pascal_ctx_d2`` (PC-59 PNG and PC-459 16-bit TIFF).

Input (``VOCtrainval_03-May-2010.tar`` extracted in ROOT, the Pascal Context ``trainval.tar.gz``
extracted into VOCdevkit/VOC2010, and ``trainval_merged.json`` beside it)::

  ROOT/VOCdevkit/VOC2010/JPEGImages/<id>.jpg
  ROOT/VOCdevkit/VOC2010/trainval/<id>.mat        LabelMap uint16: 0 unlabeled, 1..459
  ROOT/VOCdevkit/VOC2010/trainval_merged.json     images[].file_name / .phase ('train'|'val')

Output::

  ROOT/pascal_ctx_d2/images/{training,validation}/<id>.jpg
  ROOT/pascal_ctx_d2/annotations_ctx59/{training,validation}/<id>.png    0..58, 255 ignore
  ROOT/pascal_ctx_d2/annotations_ctx459/{training,validation}/<id>.tif   0..458, 65535 ignore

The split comes from ``trainval_merged.json`` (4996 train / 5105 val) as in FC-CLIP. FC-CLIP
builds the 59-class labels with the Detail API from the JSON's masks; here both label sets
come from the ``.mat`` LabelMap (the 59 classes kept, the 400 others ignored), which needs no
Detail API. [UNVERIFIED] that this is pixel-identical to the Detail-API masks.

  python data/prepare_pascal_context.py --root $DETECTRON2_DATASETS
"""
import argparse
import os

from ovsnet_jax.input.datasets import decode
from ovsnet_jax.input.datasets import prepare_jobs as pj


def split_lists(json_path: str) -> dict[str, list[str]]:
  """Image file names per phase from ``trainval_merged.json``."""
  data = decode.read_json(json_path)
  lists = {'train': [], 'val': []}
  for im in data.get('images', []):
    if 'file_name' not in im or 'phase' not in im:
      raise ValueError(f'{json_path}: an images entry lacks file_name or phase: {im}')
    if im['phase'] in lists:
      lists[im['phase']].append(im['file_name'])
  if not lists['train'] and not lists['val']:
    raise ValueError(f'{json_path}: no images with phase train or val')
  return lists


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--root', default=os.environ.get('DETECTRON2_DATASETS', 'datasets'))
  p.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
  args = p.parse_args(argv)
  voc = os.path.join(args.root, 'VOCdevkit', 'VOC2010')
  json_path = os.path.join(voc, 'trainval_merged.json')
  if not os.path.isfile(json_path):
    raise FileNotFoundError(f'{json_path} does not exist: download trainval_merged.json into '
                            f'{voc} (data/README.md)')
  out = os.path.join(args.root, 'pascal_ctx_d2')
  counts = {}
  for phase, names in split_lists(json_path).items():
    d = {'train': 'training', 'val': 'validation'}[phase]
    dirs = [os.path.join(out, sub, d) for sub in ('images', 'annotations_ctx59',
                                                   'annotations_ctx459')]
    for x in dirs:
      os.makedirs(x, exist_ok=True)
    jobs = []
    for name in names:
      stem = os.path.splitext(name)[0]
      image = os.path.join(voc, 'JPEGImages', name)
      mat = os.path.join(voc, 'trainval', f'{stem}.mat')
      for path in (image, mat):
        if not os.path.isfile(path):
          raise FileNotFoundError(f'{path} (image {name} of {json_path}) does not exist')
      jobs.append((image, mat, os.path.join(dirs[0], name), os.path.join(dirs[1], f'{stem}.png'),
                   os.path.join(dirs[2], f'{stem}.tif')))
    counts[d] = pj.run_jobs(pj.context_job, jobs, args.workers, f'pascal context {phase}')
  return counts


if __name__ == '__main__':
  from ovsnet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_argparse(lambda: print(main()), expected=(ValueError,))  # bad inputs: one line naming the file
