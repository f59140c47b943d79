"""Vocabulary similarity to the training classes (paper Table 1, Figures 1a and 4).

For every test class, its similarity to the training space is the maximum cosine similarity of
its CLIP text embedding to the embeddings of the training classes; a vocabulary is summarised by
the mean / median / min / max of these per-class maxima (Table 1).

Prompting (the paper only says "CLIP-L/14" text features) is a ``Prompting``:
  - templates: 'vild' (the 14 ViLD templates FC-CLIP prompts with; each name's embedding is the
    renormalised mean of its normalised prompt embeddings, as ``TextClassifier``), 'photo'
    ('a photo of a {}.') or 'name' (the bare name).
  - synonyms: 'main' (each class is its first name only), 'mean' (renormalised mean of its
    synonyms' embeddings) or 'max' (a pair of classes scores the max over synonym pairs).
Default ``Prompting('vild', 'main')``: [UNVERIFIED] our reading of the paper's "CLIP-L/14 text
features"; it gives 1.0 exactly for a test class named like a training class (the paper's VOC /
PC-59 medians of 1.0000).

Encoders are injected: ``encode(class_names) -> {'embeds': (K, S, D), 'valid': (K, S)}`` is a
``TextClassifier`` (real CLIP) or any function returning the same dict (tests).
"""
import dataclasses
import json
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ovsnet_jax.text import classifier as classifier_lib
from ovsnet_jax.text import templates as templates_lib

EncodeFn = Callable[[List[List[str]]], Dict[str, np.ndarray]]  # K synonym lists -> text dict
TEMPLATE_CHOICES = {'vild': templates_lib.VILD_TEMPLATES, 'photo': ('a photo of a {}.',),
                    'name': ('{}',)}
SYNONYM_CHOICES = ('main', 'mean', 'max')
STAT_KEYS = ('mean', 'median', 'min', 'max')


@dataclasses.dataclass(frozen=True)
class Prompting:
  """How classes are embedded: a template set and a synonym rule (module docstring)."""
  templates: str = 'vild'
  synonyms: str = 'main'

  def __post_init__(self):
    if self.templates not in TEMPLATE_CHOICES:
      raise ValueError(f'prompting templates: expected one of {sorted(TEMPLATE_CHOICES)}, '
                       f'got {self.templates!r}')
    if self.synonyms not in SYNONYM_CHOICES:
      raise ValueError(f'prompting synonyms: expected one of {list(SYNONYM_CHOICES)}, '
                       f'got {self.synonyms!r}')

  def describe(self) -> str:
    return f'templates={self.templates},synonyms={self.synonyms}'


def clip_encoder(clip_dir: str, prompting: Prompting, cache_dir: Optional[str] = None) -> EncodeFn:
  """The text tower of a converted CLIP checkpoint (launch/convert_open_clip.py --out DIR)."""
  return classifier_lib.TextClassifier.from_checkpoint(
      clip_dir, templates=TEMPLATE_CHOICES[prompting.templates], cache_dir=cache_dir)


def embed_vocabulary(encode: EncodeFn, class_names: Sequence[Sequence[str]],
                     prompting: Prompting) -> Dict[str, np.ndarray]:
  """Class embeddings under ``prompting``.

  Returns:
    {'embeds': float32 (K, S, D) unit vectors (zeros where padded), 'valid': bool (K, S)};
    S = 1 for synonyms 'main' and 'mean'.
  """
  names = classifier_lib.check_class_names(class_names)
  if prompting.synonyms == 'main':
    names = [c[:1] for c in names]
  text = encode(names)
  embeds, valid = np.asarray(text['embeds'], np.float32), np.asarray(text['valid'], bool)
  if embeds.ndim != 3 or valid.shape != embeds.shape[:2] or embeds.shape[0] != len(names):
    raise ValueError(f'encoder: expected embeds (K={len(names)}, S, D) and valid (K, S), got '
                     f'{embeds.shape} and {valid.shape}')
  if prompting.synonyms == 'mean':
    mean = (embeds * valid[..., None]).sum(1) / np.maximum(valid.sum(1), 1)[:, None]  # (K, D)
    return {'embeds': classifier_lib.l2_normalize(mean)[:, None], 'valid': np.ones((len(names), 1), bool)}
  return {'embeds': embeds, 'valid': valid}


def class_vectors(text: Dict[str, np.ndarray]) -> np.ndarray:
  """One unit vector per class (renormalised mean over valid synonyms): (K, S, D) -> (K, D)."""
  embeds, valid = text['embeds'], text['valid']
  mean = (embeds * valid[..., None]).sum(1) / np.maximum(valid.sum(1), 1)[:, None]  # (K, D)
  return classifier_lib.l2_normalize(mean)


def similarity_matrix(test: Dict[str, np.ndarray], train: Dict[str, np.ndarray]) -> np.ndarray:
  """(K, L) cosine similarity of test class k to training class l, max over valid synonym pairs."""
  sims = np.einsum('ksd,ltd->kslt', test['embeds'], train['embeds'])  # (K, S, L, T)
  pair_valid = test['valid'][:, :, None, None] & train['valid'][None, None]  # (K, S, L, T)
  return np.where(pair_valid, sims, -np.inf).max(axis=(1, 3))  # (K, L)


def max_similarity(test: Dict[str, np.ndarray], train: Dict[str, np.ndarray]) -> tuple:
  """Per test class its maximum similarity to the training classes and the nearest one.

  Returns:
    (sims float64 (K,), nearest int (K,)): max_l cos(test_k, train_l) and its argmax l.
  """
  matrix = similarity_matrix(test, train)  # (K, L)
  return matrix.max(axis=1).astype(np.float64), matrix.argmax(axis=1)


def vocabulary_similarity(encode: EncodeFn, test_classes: Sequence[Sequence[str]],
                          train_classes: Sequence[Sequence[str]], prompting: Prompting) -> tuple:
  """``max_similarity`` of two vocabularies embedded by ``encode`` under ``prompting``."""
  return max_similarity(embed_vocabulary(encode, test_classes, prompting),
                        embed_vocabulary(encode, train_classes, prompting))


def similarity_stats(sims: np.ndarray) -> Dict[str, float]:
  """Table-1 statistics of per-class maximum similarities: num_classes, mean, median, min, max."""
  sims = np.asarray(sims, np.float64)
  if sims.ndim != 1 or not sims.size:
    raise ValueError(f'sims: expected a non-empty (K,) array of similarities, got shape {sims.shape}')
  return {'num_classes': int(sims.size), 'mean': float(sims.mean()),
          'median': float(np.median(sims)), 'min': float(sims.min()), 'max': float(sims.max())}


def table_header() -> str:
  return '| Dataset | Cls Num. | Img Num. | Mean Sim. | Median Sim. | Min Sim. | Max Sim. |'


def table_row(name: str, stats: Dict[str, float], num_images: Optional[int] = None) -> str:
  """A Markdown row like the paper's Table 1 (4 decimals; '-' when the image count is unknown)."""
  images = '-' if num_images is None else str(num_images)
  values = ' | '.join(f'{stats[k]:.4f}' for k in STAT_KEYS)
  return f'| {name} | {stats["num_classes"]} | {images} | {values} |'


def proxy_vectors(train_vectors: np.ndarray, num: int, gamma: float, seed: int) -> np.ndarray:
  """Proxy Calibration's convex mixes of training text embeddings, eq. (5) on F_T.

  Pairs (m, n) of distinct training classes are drawn uniformly, alpha ~ Beta(gamma, gamma), and
  the proxy is alpha f_m + (1 - alpha) f_n (not renormalised, as in eq. (5)).

  Args:
    train_vectors: (L, D) training class vectors, L >= 2.
  Returns:
    (num, D) float32.
  """
  if train_vectors.shape[0] < 2:
    raise ValueError('proxies: need at least 2 training classes to mix')
  rng = np.random.default_rng(seed)
  m = rng.integers(0, train_vectors.shape[0], num)
  n = (m + rng.integers(1, train_vectors.shape[0], num)) % train_vectors.shape[0]  # n != m
  alpha = rng.beta(gamma, gamma, num)[:, None]  # (num, 1)
  return (alpha * train_vectors[m] + (1 - alpha) * train_vectors[n]).astype(np.float32)


def plot_histogram(named_sims: Dict[str, np.ndarray], path: str, bins: int = 20) -> None:
  """Figure 1(a): per-class max-similarity histograms (fraction of classes), lists overlaid."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  edges = np.linspace(0.0, 1.0, bins + 1)
  for name, sims in named_sims.items():
    sims = np.clip(np.asarray(sims, np.float64), 0.0, 1.0)
    ax.hist(sims, bins=edges, weights=np.full(sims.size, 1.0 / sims.size), alpha=0.55,
            label=f'{name} (mean {sims.mean():.2f})')
  ax.set_xlabel('max cosine similarity to the training classes')
  ax.set_ylabel('fraction of classes')
  ax.legend()
  fig.tight_layout()
  save_figure(fig, path)
  plt.close(fig)


def tsne_map(groups: Dict[str, np.ndarray], seed: int = 0, perplexity: float = 30.0) -> Dict[str, np.ndarray]:
  """Figure 4: a joint 2-D t-SNE (scikit-learn, cosine metric) of the groups' (N_g, D) vectors.

  Perplexity is capped below the number of points (scikit-learn requires it).
  """
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  names = list(groups)
  stacked = np.concatenate([np.asarray(groups[n], np.float32) for n in names])  # (N, D)
  if stacked.shape[0] < 3:
    raise ValueError(f't-SNE: expected at least 3 vectors in all, got {stacked.shape[0]}')
  tsne = TSNE(n_components=2, perplexity=min(perplexity, (stacked.shape[0] - 1) / 3),
              metric='cosine', init='pca', random_state=seed)
  points = tsne.fit_transform(stacked)  # (N, 2)
  out, start = {}, 0
  for n in names:
    out[n] = points[start:start + len(groups[n])]
    start += len(groups[n])
  return out


def plot_tsne(points: Dict[str, np.ndarray], path: str) -> None:
  """Scatter of ``tsne_map``'s output, one colour per group."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 6))
  for name, xy in points.items():
    ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.7, label=f'{name} ({len(xy)})')
  ax.legend()
  ax.set_xticks([])
  ax.set_yticks([])
  fig.tight_layout()
  save_figure(fig, path)
  plt.close(fig)


def write_json(obj, path: str) -> None:
  from ovsnet_jax import atomic_io  # pylint: disable=g-import-not-at-top
  atomic_io.write_json(obj, path, indent=1, sort_keys=True)


def save_figure(fig, path: str) -> None:
  """A matplotlib figure as PNG, atomically (`atomic_io.OutputError` names the path)."""
  from ovsnet_jax import atomic_io  # pylint: disable=g-import-not-at-top
  with atomic_io.open_atomic(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=120)
