"""OVSNet inference: FC-CLIP's geometric ensemble, void gating, semantic maps, any vocabulary.

Mask-class probabilities (FC-CLIP ``FCCLIP.forward`` eval branch, IMPLEMENTATION_NOTES.md 2f)::

  p_in  = softmax(in_vocab_logits[..., :K])        p_out = softmax(out_vocab_logits)
  a_k   = alpha if class k is seen else beta      (0 for empty masks when ensemble.on_valid_mask)
  cls   = (1 - a) log p_in + a log p_out           (= log(p_in^(1-a) p_out^a))
  void  = softmax(in_vocab_logits)[..., K]
  probs = softmax(log(cat(softmax(cls) (1 - void), void) + 1e-8))[..., :K]

then Mask2Former's ``semantic_inference``: scores[k, y, x] = sum_q probs[q, k] sigmoid(mask_q(y, x)),
masks bilinearly upsampled to the padded input, cropped to the resized image and resized to the
original size (``sem_seg_postprocess``). With ``ensemble.enabled = False`` probs are the in-vocab
softmax without void. Text logits and per-pixel scores are computed ``class_chunk`` classes at a
time, so vocabularies of any size fit in memory (the result does not depend on the chunk size).
"""
import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ovsnet_jax import evaluate
from ovsnet_jax.input import transforms
from ovsnet_jax.models import clip
from ovsnet_jax.models import heads
from ovsnet_jax.models import mask_pooling
from ovsnet_jax.models import ovsnet
from ovsnet_jax.text import classifier
from ovsnet_jax.text import vocab


def model_outputs(model, params: dict, images: jax.Array) -> dict:
  """Text-independent model outputs (the model is run on a 1-class dummy vocabulary)."""
  d = clip.get_variant(model.config.clip_variant).embed_dim
  _, out = model.apply({'params': params}, images, ovsnet.dummy_text(d), train=False)
  return out


def chunked_logits(embeds: jax.Array, text: dict, logit_scale: jax.Array, chunk: int) -> jax.Array:
  """``synonym_max_logits`` ``chunk`` classes at a time: embeds (B, Q, D) -> (B, Q, K)."""
  k = text['embeds'].shape[0]
  if chunk >= k:
    return classifier.synonym_max_logits(embeds, text, logit_scale)
  n = -(-k // chunk)
  pad = n * chunk - k
  e = jnp.pad(jnp.asarray(text['embeds'], jnp.float32), ((0, pad), (0, 0), (0, 0)))
  v = jnp.pad(jnp.asarray(text['valid']), ((0, pad), (0, 0)), constant_values=True)
  e, v = e.reshape(n, chunk, *e.shape[1:]), v.reshape(n, chunk, v.shape[-1])
  parts = jax.lax.map(lambda ev: classifier.synonym_max_logits(embeds, {'embeds': ev[0], 'valid': ev[1]},
                                                                logit_scale), (e, v))  # (n, B, Q, chunk)
  return jnp.moveaxis(parts, 0, -2).reshape(*embeds.shape[:-1], n * chunk)[..., :k]


def ensemble_probs(in_logits: jax.Array, out_logits: jax.Array, seen: jax.Array, ens,
                   valid: Optional[jax.Array] = None) -> jax.Array:
  """FC-CLIP's final mask-class probabilities.

  Args:
    in_logits: (..., Q, K+1) in-vocabulary logits, last column void.
    out_logits: (..., Q, K) out-of-vocabulary (CLIP) logits.
    seen: (K,) bool, class overlaps the training vocabulary.
    ens: ``config.model.ensemble`` (enabled, alpha, beta, on_valid_mask).
    valid: (..., Q) bool, mask has a pixel at CLIP resolution (used when ens.on_valid_mask).

  Returns:
    (..., Q, K) float32 class probabilities per mask (void dropped).
  """
  in_logits, out_logits = in_logits.astype(jnp.float32), out_logits.astype(jnp.float32)
  if not ens.enabled:
    return jax.nn.softmax(in_logits, axis=-1)[..., :-1]
  log_in = jax.nn.log_softmax(in_logits[..., :-1], axis=-1)  # (..., Q, K)
  log_out = jax.nn.log_softmax(out_logits, axis=-1)
  a = jnp.where(jnp.asarray(seen), ens.alpha, ens.beta).astype(jnp.float32)  # (K,)
  if ens.on_valid_mask and valid is not None:
    a = a * valid[..., None].astype(jnp.float32)  # (..., Q, K)
  cls = (1 - a) * log_in + a * log_out
  is_void = jax.nn.softmax(in_logits, axis=-1)[..., -1:]  # (..., Q, 1)
  probs = jnp.concatenate([jax.nn.softmax(cls, axis=-1) * (1 - is_void), is_void], axis=-1)
  return jax.nn.softmax(jnp.log(probs + 1e-8), axis=-1)[..., :-1]


def mask_class_probs(model, params: dict, out: dict, text: dict, seen: jax.Array, chunk: int) -> jax.Array:
  """(B, Q, K) final probabilities of the last prediction of ``out`` for vocabulary ``text``."""
  fused, f_c = out['fused_embeds'][-1], out['clip_embeds'][-1]  # (B, Q, D)
  logits = chunked_logits(fused, text, params['logit_scale'], chunk)  # (B, Q, K)
  scale = jnp.minimum(jnp.exp(params['logit_scale']), heads.MAX_LOGIT_SCALE)
  void = scale * jnp.einsum('bqd,d->bq', heads.l2_normalize(fused), heads.l2_normalize(params['void_embedding']))
  in_logits = jnp.concatenate([logits, void[..., None]], -1)  # (B, Q, K+1)
  out_logits = chunked_logits(f_c, text, jax.lax.stop_gradient(params['clip_logit_scale']), chunk)
  masks = out['pred_masks'][-1]  # (B, Q, h4, w4)
  valid = mask_pooling.mask_has_pixels(masks, (masks.shape[-2] // 8, masks.shape[-1] // 8))
  return ensemble_probs(in_logits, out_logits, seen, model.config.ensemble, valid)


def _seen_or_default(seen, text):
  if seen is None:
    seen = text.get('seen')
  if seen is None:  # no training-vocabulary overlap known: every class counts as unseen (beta)
    seen = jnp.zeros(text['embeds'].shape[0], bool)
  return jnp.asarray(seen, bool)


def semantic_logits(model, params: dict, images: jax.Array, text: dict, seen=None) -> jax.Array:
  """Per-class semantic scores at padded input resolution (the evaluator's ``semantic_fn``).

  Args:
    model: the OVSNet module.
    params: its params.
    images: (B, Hp, Wp, 3) float RGB 0..255, padded to a multiple of 32.
    text: TextClassifier dict (K classes); an optional 'seen' (K,) bool entry is used when
      ``seen`` is None (else every class counts as unseen).
    seen: (K,) bool seen mask (``vocab.seen_mask``).

  Returns:
    (B, Hp, Wp, K) float32 scores sum_q p(k | q) sigmoid(mask_q).
  """
  out = model_outputs(model, params, images)
  probs = mask_class_probs(model, params, out, text, _seen_or_default(seen, text),
                           int(model.config.ensemble.class_chunk))  # (B, Q, K)
  masks = out['pred_masks'][-1]  # (B, Q, h4, w4)
  masks = jax.nn.sigmoid(mask_pooling.resize_mask_logits(masks, images.shape[1:3]))  # (B, Q, Hp, Wp)
  return jnp.einsum('bqk,bqhw->bhwk', probs, masks, precision=jax.lax.Precision.HIGHEST)


def chunked_argmax(probs: jax.Array, masks: jax.Array, chunk: int, valid: Optional[jax.Array] = None) -> dict:
  """Per-pixel argmax of sum_q probs[q, k] masks[q] over classes, ``chunk`` classes at a time.

  Args:
    probs: (Q, K); masks: (Q, H, W) sigmoid masks; valid: optional (H, W) bool, the pixels that
      count for 'class_scores' (a bucket canvas's padding does not).

  Returns:
    {'labels': int32 (H, W), 'confidence': (H, W) winning score, 'class_scores': (K,) the
    maximum over pixels of each class's score}. Ties go to the lowest class index.
  """
  q, k = probs.shape
  chunk = min(chunk, k)
  n = -(-k // chunk)
  p = jnp.pad(probs, ((0, 0), (0, n * chunk - k))).reshape(q, n, chunk).transpose(1, 0, 2)  # (n, Q, chunk)

  def body(carry, xs):
    best, arg = carry
    c, pc = xs
    scores = jnp.einsum('qk,qhw->khw', pc, masks, precision=jax.lax.Precision.HIGHEST)  # (chunk, H, W)
    ids = c * chunk + jnp.arange(chunk)
    scores = jnp.where((ids < k)[:, None, None], scores, -jnp.inf)
    part_best, part_arg = scores.max(0), scores.argmax(0).astype(jnp.int32) + c * chunk
    better = part_best > best
    counted = scores if valid is None else jnp.where(valid[None], scores, -jnp.inf)
    return (jnp.where(better, part_best, best), jnp.where(better, part_arg, arg)), counted.max((1, 2))

  init = (jnp.full(masks.shape[1:], -jnp.inf, jnp.float32), jnp.zeros(masks.shape[1:], jnp.int32))
  (best, arg), class_max = jax.lax.scan(body, init, (jnp.arange(n), p))
  return {'labels': arg, 'confidence': best, 'class_scores': class_max.reshape(-1)[:k]}


def preprocess(image: np.ndarray, min_size: int, max_size: int, pad_value) -> tuple[np.ndarray, tuple[int, int]]:
  """detectron2 ResizeShortestEdge + pad to 32: uint8 (H, W, 3) -> float32 (1, Hp, Wp, 3), (h, w)."""
  if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'image: expected a (H, W, 3) uint8 RGB array, got {getattr(image, "shape", type(image))}')
  size = transforms.shortest_edge_size(image.shape[0], image.shape[1], min_size, max_size)
  resized = transforms.resize_image(image.astype(np.uint8), size)
  canvas = (transforms.round_up(size[0], 32), transforms.round_up(size[1], 32))
  return transforms.pad_image(resized, canvas, pad_value)[None], size


def segment(params: dict, image: np.ndarray, class_names: Sequence[Sequence[str]], *, model,
            classify: Optional[Callable] = None, text: Optional[dict] = None,
            train_classes: Optional[Sequence[Sequence[str]]] = None, min_size: int = 800,
            max_size: int = 1333, class_chunk: Optional[int] = None) -> dict:
  """Segments one image with any vocabulary (`segment_batch` with FC-CLIP's padding to 32).

  Args:
    params: OVSNet params.
    image: uint8 (H, W, 3) RGB.
    class_names: K classes, each a list of synonyms (first = display name).
    model: the OVSNet module (``ovsnet.build_model(config)``).
    classify: a TextClassifier (class_names -> text dict); or pass ``text`` directly.
    text: precomputed TextClassifier dict for ``class_names``.
    train_classes: training vocabulary for the seen/unseen split (default coco_panoptic_133).
    min_size, max_size: ResizeShortestEdge (800, 1333 as FC-CLIP's evaluation).
    class_chunk: classes per chunk (default ``model.config.ensemble.class_chunk``).

  Returns:
    {'labels': int32 (H, W) class index per pixel, 'confidence': float32 (H, W),
     'class_scores': float32 (K,) max score of each class over the image, 'seen': bool (K,)}.
  """
  class_names = classifier.check_class_names(class_names)
  if text is None:
    if classify is None:
      raise ValueError('segment: pass classify (a TextClassifier) or a precomputed text dict')
    text = classify(class_names)
  if text['embeds'].shape[0] != len(class_names):
    raise ValueError(f"segment: text['embeds'] has {text['embeds'].shape[0]} classes, class_names {len(class_names)}")
  seen = vocab.seen_mask(class_names, train_classes)
  if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'image: expected a (H, W, 3) uint8 RGB array, got {getattr(image, "shape", type(image))}')
  result = segment_batch(params, [image], text, seen, model=model, min_size=min_size, max_size=max_size,
                         bucket=32, batch_size=1, class_chunk=class_chunk)[0]
  result['seen'] = seen
  return result


def bucket_shapes(image_shape: tuple[int, int], min_size: int, max_size: int, bucket: int):
  """(resized (h, w), input canvas (Hp, Wp), output canvas (Hl, Wl)) of one image: canvases rounded up
  to `bucket` (a multiple of 32), so images of similar sizes share one compiled program."""
  if bucket % 32:
    raise ValueError(f'bucket: expected a multiple of 32 (the model stride), got {bucket}')
  size = transforms.shortest_edge_size(image_shape[0], image_shape[1], min_size, max_size)
  canvas = (transforms.round_up(size[0], bucket), transforms.round_up(size[1], bucket))
  out = (transforms.round_up(image_shape[0], bucket), transforms.round_up(image_shape[1], bucket))
  return size, canvas, out


def segment_batch(params: dict, images: Sequence[np.ndarray], text: dict, seen, *, model, min_size: int = 800,
                  max_size: int = 1333, bucket: int = 128, batch_size: int = 4,
                  class_chunk: Optional[int] = None, on_done: Optional[Callable] = None) -> list[dict]:
  """Segments many images with one vocabulary, batched by size bucket (one compile per bucket).

  Images are resized as `segment` does, padded to a `bucket`-rounded canvas (extra padding, as
  detectron2's batched inference pads every image to the batch's largest) and grouped by canvas;
  each group runs `batch_size` images at a time (the last batch repeats an image). `bucket=32`
  pads like single-image inference.

  Args:
    images: uint8 (H, W, 3) RGB arrays of any sizes.
    text: TextClassifier dict of the K classes; seen: (K,) bool.
    on_done: called with the number of images finished after each batch (progress bars).

  Returns:
    Per image, in input order, `segment`'s dict without 'seen'.
  """
  chunk = int(class_chunk or model.config.ensemble.class_chunk)
  text = {'embeds': jnp.asarray(text['embeds']), 'valid': jnp.asarray(text['valid'])}
  seen = jnp.asarray(seen, bool)
  groups: dict = {}
  for i, image in enumerate(images):
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'images[{i}]: expected a (H, W, 3) uint8 RGB array, got {getattr(image, "shape", type(image))}')
    size, canvas, out = bucket_shapes(image.shape[:2], min_size, max_size, bucket)
    groups.setdefault((canvas, out), []).append((i, size))
  results = [None] * len(images)
  for (canvas, out), members in groups.items():
    for start in range(0, len(members), batch_size):
      part = members[start:start + batch_size]
      part = part + [part[-1]] * (batch_size - len(part))  # static batch
      batch = np.stack([transforms.pad_image(transforms.resize_image(images[i].astype(np.uint8), size), canvas,
                                             model.config.pixel_mean) for i, size in part])
      sizes = np.array([size for _, size in part], np.int32)
      origs = np.array([images[i].shape[:2] for i, _ in part], np.int32)
      res = jax.device_get(_segment_bucket(model, chunk, out, params, jnp.asarray(batch), sizes, origs, text, seen))
      done = {}
      for j, (i, _) in enumerate(part):
        if i in done:
          continue
        h, w = images[i].shape[:2]
        results[i] = {'labels': res['labels'][j, :h, :w], 'confidence': res['confidence'][j, :h, :w],
                      'class_scores': res['class_scores'][j]}
        done[i] = True
      if on_done is not None:
        on_done(len(done))
  return results


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _segment_bucket(model, chunk: int, out_shape: tuple[int, int], params, images, sizes, origs, text, seen):
  """Device part of `segment_batch`: (B, Hp, Wp, 3) canvases, dynamic resized/original sizes (B, 2)."""
  out = model_outputs(model, params, images)
  probs = mask_class_probs(model, params, out, text, seen, chunk)  # (B, Q, K)
  masks = jax.nn.sigmoid(mask_pooling.resize_mask_logits(out['pred_masks'][-1], images.shape[1:3]))  # (B, Q, Hp, Wp)

  def one(p, m, size, orig):
    m = evaluate.resize_to_original(jnp.moveaxis(m, 0, -1), size, orig, out_shape)  # (Hl, Wl, Q)
    ys, xs = jnp.arange(out_shape[0])[:, None], jnp.arange(out_shape[1])[None, :]
    return chunked_argmax(p, jnp.moveaxis(m, -1, 0), chunk, (ys < orig[0]) & (xs < orig[1]))
  return jax.vmap(one)(probs, masks, sizes, origs)
