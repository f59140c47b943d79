r"""Similarity of test vocabularies to the training classes: Table 1 rows, Figure 1(a), Figure 4.

  python launch/vocab_similarity.py --clip=checkpoints/clip_vit_l_14 \
      --classes=ade150,ade847,pc59,pc459,voc20 --out=out/similarity
  # your own list (vocabulary file: 'idx:name,syn' lines or one 'name,syn' per line):
  python launch/vocab_similarity.py --clip=DIR --classes=my_classes.txt --out=DIR
  # t-SNE with Proxy-Calibration proxies (Beta(2, 2) mixes of training embeddings):
  python launch/vocab_similarity.py --clip=DIR --classes=ade150 --proxies=500 --out=DIR

--clip is a converted CLIP (launch/convert_open_clip.py); the paper uses CLIP-L/14, i.e.
`--model ViT-L-14` converted from OpenAI's weights. Each class's score is its maximum cosine
similarity to the training classes (--train_classes, default COCO-Panoptic's 133); prompting is
--templates (vild | photo | name) and --synonyms (main | mean | max), default vild + main
(ovsnet_jax/openbench/similarity.py). Writes to --out: `similarity.json` (per list: the Table-1
statistics, per-class similarity and nearest training class), `table.md`, `histogram.png` (all
lists overlaid) and `tsne.png` (training, test and proxy embeddings; --notsne to skip).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from ovsnet_jax import atomic_io
from ovsnet_jax import cli
from ovsnet_jax.openbench import similarity
from ovsnet_jax.text import vocab


def list_name(spec: str) -> str:
  """'ade150' -> 'ade150'; '/x/my_classes.txt' -> 'my_classes'."""
  return spec if spec in vocab.VOCABULARIES else os.path.splitext(os.path.basename(spec))[0]


def load_vocabulary(spec: str):
  """A shipped vocabulary name or a class-name file (clear errors for anything else)."""
  if spec in vocab.VOCABULARIES:
    return vocab.load_class_names(spec)
  if not os.path.isfile(spec):
    raise FileNotFoundError(f'--classes: {spec!r} is neither a shipped vocabulary '
                            f'{list(vocab.VOCABULARIES)} nor an existing class-name file')
  return vocab.read_class_file(spec)


def run(encode: similarity.EncodeFn, test_specs: list, train_spec: str, out: str,
        prompting: similarity.Prompting, *, tsne: bool = True, proxies: int = 0,
        gamma: float = 2.0, seed: int = 0) -> dict:
  """Computes and writes everything (module docstring); returns the JSON written."""
  train_classes = load_vocabulary(train_spec)
  train = similarity.embed_vocabulary(encode, train_classes, prompting)
  report = {'train_classes': list_name(train_spec), 'prompting': prompting.describe(), 'lists': {}}
  vectors = {f'train ({list_name(train_spec)})': similarity.class_vectors(train)}
  named_sims = {}
  for spec in test_specs:
    name, classes = list_name(spec), load_vocabulary(spec)
    text = similarity.embed_vocabulary(encode, classes, prompting)
    sims, nearest = similarity.max_similarity(text, train)
    named_sims[name] = sims
    vectors[name] = similarity.class_vectors(text)
    report['lists'][name] = {
        **similarity.similarity_stats(sims),
        'classes': [{'name': c[0], 'similarity': float(s), 'nearest_train': train_classes[j][0]}
                    for c, s, j in zip(classes, sims, nearest)]}
  lines = [similarity.table_header(), '|' + '---|' * 7]
  lines += [similarity.table_row(n, report['lists'][n]) for n in named_sims]
  table = '\n'.join(lines)
  print(table, flush=True)
  atomic_io.write_text(table + '\n', os.path.join(out, 'table.md'))
  similarity.write_json(report, os.path.join(out, 'similarity.json'))
  similarity.plot_histogram(named_sims, os.path.join(out, 'histogram.png'))
  if tsne:
    if proxies:
      train_vectors = next(iter(vectors.values()))
      vectors['proxies (PC)'] = similarity.proxy_vectors(train_vectors, proxies, gamma, seed)
    similarity.plot_tsne(similarity.tsne_map(vectors, seed=seed), os.path.join(out, 'tsne.png'))
  return report


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--clip', required=True, help='converted CLIP directory')
  parser.add_argument('--classes', required=True,
                      help='comma-separated test vocabularies: shipped names or class-name files')
  parser.add_argument('--train_classes', default='coco_panoptic_133')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--templates', default='vild', choices=sorted(similarity.TEMPLATE_CHOICES))
  parser.add_argument('--synonyms', default='main', choices=similarity.SYNONYM_CHOICES)
  parser.add_argument('--notsne', action='store_true', help='skip the t-SNE map')
  parser.add_argument('--proxies', type=int, default=0, help='PC proxies in the t-SNE map')
  parser.add_argument('--gamma', type=float, default=2.0, help='Beta(gamma, gamma) of the proxies')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--text_cache', default='', help='text-embedding cache directory')
  args = parser.parse_args(argv)
  prompting = similarity.Prompting(args.templates, args.synonyms)
  encode = similarity.clip_encoder(args.clip, prompting, args.text_cache or None)
  specs = [s for s in args.classes.split(',') if s]
  run(encode, specs, args.train_classes, args.out, prompting, tsne=not args.notsne,
      proxies=args.proxies, gamma=args.gamma, seed=args.seed)
  print(f'wrote {args.out}', flush=True)
  return 0


if __name__ == '__main__':
  np.set_printoptions(precision=4)
  cli.run_argparse(main, expected=(ValueError,))  # ValueError: a bad input named by its message
