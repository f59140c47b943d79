"""The inference class-count study (paper Figure 5): mIoU as irrelevant classes are added.

For each k in a list, the dataset's own vocabulary is extended by k distractor classes drawn from
a pool (e.g. ADE-847) minus every class sharing a name with the dataset's own, and the same
images are evaluated with ``evaluate.evaluate_dataset``. Draws are nested: one seeded permutation
of the pool, the first k of it, so a larger vocabulary contains every smaller one. Distractors
never occur in the ground truth; the evaluator's mIoU averages the classes with ground truth
(the dataset's own), so predicting a distractor only costs IoU.
"""
from typing import Any, Callable, Dict, List, Sequence

import numpy as np

from ovsnet_jax import evaluate
from ovsnet_jax.openbench import similarity

FIGURES = ('mIoU', 'fwIoU', 'mACC', 'pACC')


def distractor_pool(pool: Sequence[Sequence[str]],
                    dataset_classes: Sequence[Sequence[str]]) -> List[List[str]]:
  """Pool classes sharing no name (case-insensitive, any synonym) with the dataset, main names unique."""
  own = {s.strip().lower() for c in dataset_classes for s in c}
  out, mains = [], set()
  for c in pool:
    names = {s.strip().lower() for s in c}
    if own.isdisjoint(names) and c[0].lower() not in mains:
      mains.add(c[0].lower())
      out.append(list(c))
  return out


def draw_distractors(pool: Sequence[Sequence[str]], k: int, seed: int) -> List[List[str]]:
  """The first k classes of a seeded permutation of ``pool`` (nested in k)."""
  if not 0 <= k <= len(pool):
    raise ValueError(f'k={k}: expected 0 <= k <= {len(pool)} (the distractor pool size)')
  order = np.random.default_rng(seed).permutation(len(pool))
  return [list(pool[i]) for i in order[:k]]


def text_prefix(text: Dict[str, np.ndarray], n: int) -> Callable:
  """A ``text_fn`` returning the first n classes of a TextClassifier dict (whatever it is asked)."""
  return lambda _: {'embeds': text['embeds'][:n], 'valid': text['valid'][:n]}


class ExtendedVocabulary:
  """A semantic reader whose vocabulary is ``class_names`` (its own classes first)."""

  def __init__(self, reader: Sequence[dict], class_names: List[List[str]]):
    self.reader = reader
    self.class_names = class_names

  def __len__(self) -> int:
    return len(self.reader)

  def __getitem__(self, i: int) -> dict:
    return self.reader[i]


def run_study(config, semantic_fn: Callable, params: Any, text_fn: Callable, mesh, dataset: str,
              reader: Sequence[dict], dataset_classes: List[List[str]], pool: Sequence[Sequence[str]],
              ks: Sequence[int], seed: int = 0, progress: bool = True) -> Dict[str, Any]:
  """Evaluates with k distractors for each k.

  ``text_fn`` is called once, on the largest vocabulary; smaller ones use its first rows (same
  embeddings: a class's text does not depend on the other classes).

  Returns:
    {'dataset', 'num_classes' (the dataset's K), 'pool_size', 'seed', 'results': [{'k',
    'vocabulary_size', 'mIoU', 'fwIoU', 'mACC', 'pACC', 'distractors': [main names]}, ...]}.
  """
  pool = distractor_pool(pool, dataset_classes)
  ks = sorted(set(int(k) for k in ks))
  if not ks:
    raise ValueError('ks: expected at least one number of distractors, e.g. [0, 100, 200]')
  if ks[-1] > len(pool):
    raise ValueError(f'ks: {ks[-1]} distractors asked for, but the pool has only {len(pool)} classes '
                     'not named like the dataset\'s own')
  results = []
  # Nested draws: every vocabulary is a prefix of the largest, so its text is embedded once.
  full = [list(c) for c in dataset_classes] + draw_distractors(pool, ks[-1], seed)
  full_text = text_fn(full)
  for k in ks:
    extra = draw_distractors(pool, k, seed)
    names = [list(c) for c in dataset_classes] + extra
    res = evaluate.evaluate_dataset(config, semantic_fn, params, text_prefix(full_text, len(names)),
                                    mesh, dataset=dataset, reader=ExtendedVocabulary(reader, names),
                                    progress=progress)
    figures = {f: None if np.isnan(res[f]) else float(res[f]) for f in FIGURES}  # JSON-safe
    results.append({'k': k, 'vocabulary_size': len(names), **figures,
                    'distractors': [c[0] for c in extra]})
  return {'dataset': dataset, 'num_classes': len(dataset_classes), 'pool_size': len(pool),
          'seed': seed, 'results': results}


def plot_study(study: Dict[str, Any], path: str, label: str = '') -> None:
  """mIoU against the vocabulary size (PNG)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  sizes = [r['vocabulary_size'] for r in study['results']]
  miou = [r['mIoU'] for r in study['results']]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(sizes, miou, marker='o', label=label or study['dataset'])
  ax.set_xlabel('number of inference classes')
  ax.set_ylabel('mIoU (%)')
  ax.set_title(f"{study['dataset']}: {study['num_classes']} classes + k irrelevant ones")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  similarity.save_figure(fig, path)
  plt.close(fig)
