r"""Builds OpenBench from source datasets by CLIP similarity to the training classes (paper 3.2).

  python launch/build_openbench.py --clip=checkpoints/clip_vit_l_14 \
      --sources=foodseg103=/data/FoodSeg103,imagenet_s=/data/ImageNet-S,camvid=/data/SegNet \
      --out=$DETECTRON2_DATASETS --sigma1=0.75 --sigma2=0.8 [--manual=curation.json]
  python launch/eval.py ... --dataset=openbench --data_root=$DETECTRON2_DATASETS

Sources: foodseg103, imagenet_s, camvid (SegNet's 11-class CamVid) or camvid32 (the official
32-class colour labels); layouts and default splits in ovsnet_jax/openbench/sources.py
(--splits=camvid=train+val+test to change them). An image is dropped when the minimum over its classes of each class's maximum
similarity to --train_classes exceeds --sigma1; in kept images classes above --sigma2 become
"others" (and so does the sources' own background, --background=ignore to ignore it instead).
The paper does not publish sigma1 / sigma2: both are required. --manual is a JSON file:
  {"exclude_classes": ["foodseg103:other ingredients"], "exclude_images": ["camvid_test_0001TP_006690"],
   "merge": {"imagenet_s:tabby": "cat"}}
Writes --out/openbench/{images,annotations,class_names.txt,stats.json} and progress files in
--out/openbench_build/: an interrupted run picks up where it stopped.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from ovsnet_jax import cli
from ovsnet_jax.convert import open_clip as convert_open_clip
from ovsnet_jax.openbench import build, similarity, sources, writer
from ovsnet_jax.text import vocab


def parse_pairs(text: str, flag: str) -> dict:
  """'a=x,b=y' -> {'a': 'x', 'b': 'y'} with names checked against the known sources."""
  out = {}
  for item in filter(None, text.split(',')):
    name, sep, value = item.partition('=')
    if not sep or not value or name not in sources.SOURCES:
      raise ValueError(f'{flag}: expected name=value with name in {sorted(sources.SOURCES)}, got {item!r}')
    out[name] = value
  return out


def main(argv=None, encode=None) -> int:
  """Command line entry; ``encode`` replaces the CLIP text tower (tests)."""
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--clip', required=True, help='converted CLIP directory (CLIP-L/14 in the paper)')
  parser.add_argument('--sources', required=True, help='name=root,... for foodseg103, imagenet_s, camvid|camvid32')
  parser.add_argument('--splits', default='', help="name=split+split,... (default: evaluation splits)")
  parser.add_argument('--out', required=True, help='output root (the openbench reader\'s data root)')
  parser.add_argument('--sigma1', type=float, required=True, help='image similarity threshold')
  parser.add_argument('--sigma2', type=float, required=True, help='class -> "others" threshold')
  parser.add_argument('--manual', default='', help='curation JSON (exclusions, merges)')
  parser.add_argument('--train_classes', default='coco_panoptic_133')
  parser.add_argument('--templates', default='vild', choices=sorted(similarity.TEMPLATE_CHOICES))
  parser.add_argument('--synonyms', default='main', choices=similarity.SYNONYM_CHOICES)
  parser.add_argument('--background', default='others', choices=build.BACKGROUND_CHOICES)
  parser.add_argument('--text_cache', default='')
  parser.add_argument('--noprogress', action='store_true')
  args = parser.parse_args(argv)
  roots = parse_pairs(args.sources, '--sources')
  splits = {k: tuple(v.split('+')) for k, v in parse_pairs(args.splits, '--splits').items()}
  srcs = [sources.get_source(name, root, splits.get(name, ())) for name, root in roots.items()]
  prompting = similarity.Prompting(args.templates, args.synonyms)
  if encode is None:
    encode = similarity.clip_encoder(args.clip, prompting, args.text_cache or None)
  clip_config = convert_open_clip.read_clip_config(args.clip)
  stats = writer.build_openbench(
      srcs, encode, args.out, sigma1=args.sigma1, sigma2=args.sigma2,
      train_classes=vocab.resolve_vocabulary(args.train_classes), train_name=args.train_classes,
      prompting=prompting, manual=build.read_manual(args.manual), background=args.background,
      encoder_id=f"{clip_config['variant']}:{clip_config['sha256']}", progress=not args.noprogress)
  print(similarity.table_header())
  print(stats['table_row'])
  print(f"wrote {os.path.join(args.out, 'openbench')}: {stats['num_images']} images, "
        f"{stats['num_classes']} classes; per source {stats['sources']}", flush=True)
  return 0


if __name__ == '__main__':
  cli.run_argparse(main, expected=(ValueError,))  # ValueError: a bad input named by its message
