"""Text classifier: prompted CLIP text embeddings of a vocabulary, cached on disk.

Per class k and synonym s, every template is filled with the synonym, the prompts are encoded by
the CLIP text tower, each embedding is L2-normalised, the T embeddings are averaged and the mean
is L2-normalised again (FC-CLIP ``get_text_classifier``). Classes have different numbers of
synonyms; the result is padded to S = max synonyms with a ``valid`` mask. Logits merge synonyms
by a max (FC-CLIP ``get_classification_logits``, "max ensemble as in OpenSeg/ODISE").

Prompts are encoded shortest first, each chunk cut after its longest prompt (exact: CLIP's causal
mask keeps the EOT output independent of later positions), with a progress bar.

Cache: ``<cache_dir>/text_<key>.npz`` (``default_cache_dir()``: $OVSNET_JAX_CACHE/text, else
$XDG_CACHE_HOME/ovsnet_jax/text, else ~/.cache/ovsnet_jax/text) where key = sha256 of (checkpoint identity, class list,
templates, dtype). The file also stores the full key text; a file whose key, shapes, norms or
finiteness do not check out is rebuilt, never trusted. Writes go to a temp file then ``os.replace``.
"""
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from ovsnet_jax.models import layers
from ovsnet_jax.text import templates as templates_lib
from ovsnet_jax.text import tokenizer as tokenizer_lib

EncodeFn = Callable[[np.ndarray], np.ndarray]  # int32 (N, 77) -> (N, D)
CACHE_FORMAT = 1
EPS = 1e-12


def default_cache_dir() -> str:
  """The user's text-classifier cache: $OVSNET_JAX_CACHE/text, $XDG_CACHE_HOME/ovsnet_jax/text or ~/.cache/..."""
  root = os.environ.get('OVSNET_JAX_CACHE')
  if not root:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    root = os.path.join(base, 'ovsnet_jax')
  return os.path.join(root, 'text')


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
  """x / max(||x||, 1e-12) along ``axis``, in float32."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), EPS)


def check_class_names(class_names: Sequence[Sequence[str]]) -> List[List[str]]:
  """Validates a vocabulary (K lists of synonyms) and returns it as lists."""
  if isinstance(class_names, str) or not len(class_names):
    raise ValueError('class_names: expected a non-empty list of synonym lists, e.g. [["cat"]]')
  out = []
  for k, synonyms in enumerate(class_names):
    if isinstance(synonyms, str) or not len(synonyms):
      raise ValueError(f'class_names[{k}]: expected a non-empty list of names, got {synonyms!r}')
    for s in synonyms:
      if not isinstance(s, str) or not s.strip():
        raise ValueError(f'class_names[{k}]: names must be non-empty strings, got {s!r}')
    out.append(list(synonyms))
  return out


class TextClassifier:
  """Embeds vocabularies with a text encoder and caches the result per vocabulary.

  Attributes:
    encode_tokens: int32 (N, 77) -> (N, D) text encoder (e.g. the jitted CLIP text tower).
    templates: prompt templates with one '{}' each.
    chunk_size: prompts per encoder call; the last chunk is zero-padded so shapes stay static.
    cache_dir: where cached classifiers go ('' or None: no cache).
    cache_id: identity of the encoder (e.g. its checkpoint hash); required with a cache_dir.
    trim: cut each chunk of tokens after its longest prompt (the encoder must accept (N, T<=77)).
    progress: a tqdm bar over prompts when the vocabulary needs more than one encoder call.
  """

  def __init__(self, encode_tokens: EncodeFn, *,
               templates: Sequence[str] = templates_lib.VILD_TEMPLATES,
               tokenizer: Optional[tokenizer_lib.Tokenizer] = None, chunk_size: int = 256,
               cache_dir: Optional[str] = None, cache_id: Optional[str] = None, trim: bool = True,
               progress: bool = True):
    if not templates or any(t.count('{}') != 1 for t in templates):
      raise ValueError(f'templates: expected a non-empty list with one "{{}}" each, got {templates!r}')
    if chunk_size < 1:
      raise ValueError(f'chunk_size: expected a positive number of prompts, got {chunk_size}')
    if cache_dir and not cache_id:
      raise ValueError('cache_id: required with cache_dir (it keys the cache to the encoder)')
    self.encode_tokens = encode_tokens
    self.templates = tuple(templates)
    self.tokenizer = tokenizer or tokenizer_lib.Tokenizer()
    self.chunk_size = chunk_size
    self.cache_dir = cache_dir or None
    self.cache_id = cache_id
    self.trim = trim
    self.progress = progress

  @classmethod
  def from_params(cls, variant: str, text_params, *, dtype=jnp.float32,
                  **kwargs) -> 'TextClassifier':
    """The jitted CLIP text tower ``CLIPText(variant)`` with ``text_params`` (the 'text' subtree).

    Pass ``cache_id`` (and ``cache_dir``) to cache; random params have no identity of their own.
    """
    from ovsnet_jax.models import clip_text  # pylint: disable=g-import-not-at-top
    variables = {'params': jax.device_put(text_params)}
    encode = jax.jit(clip_text.CLIPText(variant, dtype=dtype).apply)  # params as an argument
    return cls(lambda tokens: np.asarray(encode(variables, tokens), np.float32), **kwargs)

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, *, dtype=jnp.float32, **kwargs) -> 'TextClassifier':
    """The CLIP text tower of a converted checkpoint (launch/convert_open_clip.py --out DIR).

    The cache id is the variant and weight sha256 from ``DIR/clip_config.json`` plus the compute
    dtype (the same weights converted twice share a cache); the tokenizer uses the checkpoint's
    ``DIR/bpe_simple_vocab_16e6.txt.gz``.
    """
    from ovsnet_jax.convert import open_clip as convert_open_clip  # pylint: disable=g-import-not-at-top
    config = convert_open_clip.read_clip_config(ckpt_dir)
    variant, params = convert_open_clip.load_clip_checkpoint(ckpt_dir)
    if 'tokenizer' not in kwargs:
      kwargs['tokenizer'] = tokenizer_lib.Tokenizer(
          os.path.join(ckpt_dir, tokenizer_lib.BPE_FILE_NAME))
    kwargs.setdefault('cache_id', f"{variant}:{config['sha256']}:{jnp.dtype(dtype).name}")
    return cls.from_params(variant, params['text'], dtype=dtype, **kwargs)

  def cache_key(self, class_names: Sequence[Sequence[str]]) -> str:
    """The text the cache is keyed by (checkpoint identity, classes, templates)."""
    return json.dumps({'format': CACHE_FORMAT, 'checkpoint': self.cache_id,
                       'classes': [list(c) for c in class_names],
                       'templates': list(self.templates)}, sort_keys=True)

  def cache_path(self, class_names: Sequence[Sequence[str]]) -> str:
    digest = hashlib.sha256(self.cache_key(class_names).encode('utf-8')).hexdigest()[:24]
    return os.path.join(self.cache_dir, f'text_{digest}.npz')

  def embed_synonyms(self, synonyms: Sequence[str]) -> np.ndarray:
    """(U,) names -> (U, D) float32: per name, the renormalised mean of normalised prompts.

    Prompts are encoded shortest first, ``chunk_size`` at a time, each chunk cut after its longest
    prompt (``clip_text.trim_tokens``, exact under the causal mask) when ``trim`` is set.
    """
    from ovsnet_jax.models import clip_text  # pylint: disable=g-import-not-at-top
    prompts = [p for s in synonyms for p in templates_lib.fill_templates(s, self.templates)]
    tokens = self.tokenizer(prompts)  # (U*T, 77)
    n = len(prompts)
    order = np.argsort(np.argmax(tokens, axis=-1), kind='stable')  # shortest prompts first
    tokens = tokens[order]
    pad = -n % self.chunk_size
    tokens = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), tokens.dtype)])
    chunks = []
    show = self.progress and n > self.chunk_size
    with tqdm.tqdm(total=n, disable=not show, desc='text encoder', unit='prompt', dynamic_ncols=True) as bar:
      for start in range(0, n + pad, self.chunk_size):
        part = tokens[start:start + self.chunk_size]
        if self.trim:
          part = clip_text.trim_tokens(part)
        out = np.asarray(self.encode_tokens(part), np.float32)
        if out.ndim != 2 or out.shape[0] != self.chunk_size:
          raise ValueError(f'encode_tokens: expected (N, D) for N={self.chunk_size} prompts, '
                           f'got shape {out.shape}')
        chunks.append(out)
        bar.update(min(self.chunk_size, n - start))
    feats = np.empty((n, chunks[0].shape[-1]), np.float32)
    feats[order] = np.concatenate(chunks)[:n]
    feats = l2_normalize(feats)  # (U*T, D)
    feats = feats.reshape(len(synonyms), len(self.templates), -1).mean(axis=1)  # (U, D)
    return l2_normalize(feats)

  def build(self, class_names: Sequence[Sequence[str]]) -> Dict[str, np.ndarray]:
    """Embeds a vocabulary without the cache: {'embeds': (K, S, D), 'valid': (K, S)}."""
    class_names = check_class_names(class_names)
    unique = list(dict.fromkeys(s for synonyms in class_names for s in synonyms))
    row = {s: i for i, s in enumerate(unique)}
    feats = self.embed_synonyms(unique)  # (U, D)
    k, s_max = len(class_names), max(len(c) for c in class_names)
    embeds = np.zeros((k, s_max, feats.shape[-1]), np.float32)  # (K, S, D)
    valid = np.zeros((k, s_max), bool)  # (K, S)
    for i, synonyms in enumerate(class_names):
      embeds[i, :len(synonyms)] = feats[[row[s] for s in synonyms]]
      valid[i, :len(synonyms)] = True
    return {'embeds': embeds, 'valid': valid}

  def __call__(self, class_names: Sequence[Sequence[str]]) -> Dict[str, np.ndarray]:
    """{'embeds': float32 (K, S, D) L2-normalised (zeros where padded), 'valid': bool (K, S)}."""
    class_names = check_class_names(class_names)
    if not self.cache_dir:
      return self.build(class_names)
    path, key = self.cache_path(class_names), self.cache_key(class_names)
    cached = read_cache(path, key, class_names)
    if cached is not None:
      return cached
    text = self.build(class_names)
    write_cache(path, key, text)
    return text


def read_cache(path: str, key: str, class_names: List[List[str]]) -> Optional[Dict[str, np.ndarray]]:
  """The cached classifier at ``path`` if it exists and checks out, else None (logged)."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      stored_key, embeds, valid = str(f['key']), f['embeds'], f['valid']
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    logging.warning('text cache %s unreadable (%s); rebuilding', path, e)
    return None
  lengths = np.array([len(c) for c in class_names])
  expected_valid = np.arange(lengths.max())[None, :] < lengths[:, None]  # (K, S)
  problem = None
  if stored_key != key:
    problem = 'key differs'
  elif valid.dtype != bool or valid.shape != expected_valid.shape or (valid != expected_valid).any():
    problem = 'valid mask does not match the class list'
  elif embeds.dtype != np.float32 or embeds.ndim != 3 or embeds.shape[:2] != valid.shape:
    problem = f'embeds have dtype {embeds.dtype} shape {embeds.shape}'
  elif not np.isfinite(embeds).all() or not np.allclose(
      np.linalg.norm(embeds[valid], axis=-1), 1.0, atol=1e-3):
    problem = 'embeds are not finite unit vectors'
  if problem:
    logging.warning('text cache %s invalid (%s); rebuilding', path, problem)
    return None
  return {'embeds': embeds, 'valid': valid}


def write_cache(path: str, key: str, text: Dict[str, np.ndarray]) -> None:
  """Writes the classifier atomically: a temp file in the same directory, then os.replace."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, key=np.array(key), embeds=text['embeds'], valid=text['valid'])
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def synonym_max_logits(feats: jax.Array, text: Dict[str, jax.Array],
                       logit_scale: jax.Array) -> jax.Array:
  """Class logits with FC-CLIP's max over synonyms.

  Args:
    feats: (..., D) visual embeddings (L2-normalised here again, as FC-CLIP does).
    text: the TextClassifier dict, 'embeds' (K, S, D) and 'valid' (K, S).
    logit_scale: () the log temperature; the multiplier is min(exp(logit_scale), 100).

  Returns:
    (..., K) logits: scale * max over valid synonyms s of cos(feats, embeds[k, s]).
  """
  feats = layers.l2_normalize(feats)  # finite gradient for an all-zero feature
  scale = jnp.minimum(jnp.exp(logit_scale), 100.0)
  sims = jnp.einsum('...d,ksd->...ks', feats, jnp.asarray(text['embeds'], feats.dtype))  # (..., K, S)
  sims = jnp.where(jnp.asarray(text['valid']), sims, -jnp.inf)
  return scale * jnp.max(sims, axis=-1)  # (..., K)
