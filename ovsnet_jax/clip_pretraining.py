"""Pretrains a small ConvNeXt-CLIP on the captioned shapes world, and caches it as a converted CLIP.

CLIP's recipe at toy scale: symmetric contrastive loss over a batch of (image, caption) pairs with
a learned temperature (open_clip `ClipLoss`), AdamW with linear warmup then cosine decay (optax).
Captions repeat in this world, so a pair's targets are soft: every caption in the batch that is
identical to its own is a positive (uniform over them). Images get flips, a random RGB channel
permutation and colour inversion on device, so colour carries no class information.

The result is written by `convert.open_clip.write_checkpoint_dir` in exactly the directory format
of `launch/convert_open_clip.py` (`params/`, `clip_config.json`, the BPE vocabulary), under
`<cache>/clip/<variant>-<hash of the settings>`, where <cache> is `$OVSNET_CACHE` or
`~/.cache/ovsnet_jax`; everything after loads it through `--config.clip_checkpoint` like any CLIP.
A zero-shot report goes beside it as `<dir>.json`: image-level on held-out single-concept images
(`zero_shot`) and segment-level with ground-truth masks on held-out scenes (`dense_zero_shot`),
seen and unseen classes apart.
"""
import dataclasses
import hashlib
import json
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ovsnet_jax import atomic_io
from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.input import shapes
from ovsnet_jax.input import shapes_corpus
from ovsnet_jax.models import clip
from ovsnet_jax.text import tokenizer as tokenizer_lib

# Bump when the corpus, the augmentation, the loss or the numerics of a step change: new cache entries.
# 2: the depthwise conv's hand-written VJP on CPU and a jitted init (same maths, other roundings).
RECIPE_VERSION = 2
PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)  # open_clip's, as configs/common.py
PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)
MAX_LOG_SCALE = float(np.log(100.0))  # open_clip clamps the logit scale at 100


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything the pretrained weights depend on (its hash names the cache entry)."""
  variant: str = 'test_tiny'
  ls_init: float = 0.1  # initial ConvNeXt layer scale (open_clip: 1e-6, which leaves blocks inert here)
  image_size: int = 64
  num_images: int = 4000  # corpus images rendered once, then augmented on device
  batch_size: int = 64
  steps: int = 1000
  lr: float = 2e-3  # 3e-3 and 5e-3 (with layer scale 1.0) collapsed to loss ln(B) for 150+ steps
  warmup_steps: int = 50
  weight_decay: float = 0.05
  seed: int = 0
  world_seed: int = 0
  patterned: bool = True  # things wear their class's surface pattern (`shapes.THING_PATTERNS`)

  def check(self) -> None:
    """Raises a ValueError naming the first bad field."""
    clip.get_variant(self.variant)
    for name in ('image_size', 'num_images', 'batch_size', 'steps', 'lr'):
      if not getattr(self, name) > 0:
        raise ValueError(f'clip_pretrain.{name} must be > 0, got {getattr(self, name)!r}')
    if self.image_size % 32:
      raise ValueError(f'clip_pretrain.image_size must be a multiple of 32, got {self.image_size}')
    if not 0 <= self.warmup_steps <= self.steps:
      raise ValueError(f'clip_pretrain.warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}')

  def digest(self) -> str:
    text = json.dumps({**dataclasses.asdict(self), 'recipe': RECIPE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_root() -> str:
  return os.environ.get('OVSNET_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'ovsnet_jax')


def checkpoint_dir(settings: Settings, root: Optional[str] = None) -> str:
  return os.path.join(root or cache_root(), 'clip', f'{settings.variant}-{settings.digest()}')


def normalize(images: jax.Array) -> jax.Array:
  """uint8/float 0..255 (B, H, W, 3) -> CLIP-normalised float32."""
  return (images.astype(jnp.float32) - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)


def augment(images: jax.Array, rng: jax.Array) -> jax.Array:
  """Per image: horizontal flip, vertical flip, RGB channel permutation, inversion (all p=0.5 / uniform)."""
  b = images.shape[0]
  k1, k2, k3, k4 = jax.random.split(rng, 4)
  x = images.astype(jnp.float32)  # (B, H, W, 3)
  x = jnp.where(jax.random.bernoulli(k1, 0.5, (b, 1, 1, 1)), x[:, :, ::-1], x)
  x = jnp.where(jax.random.bernoulli(k2, 0.5, (b, 1, 1, 1)), x[:, ::-1], x)
  perms = jnp.asarray([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
  perm = perms[jax.random.randint(k3, (b,), 0, 6)]  # (B, 3)
  x = jnp.take_along_axis(x, perm[:, None, None, :], axis=-1)
  return jnp.where(jax.random.bernoulli(k4, 0.5, (b, 1, 1, 1)), 255.0 - x, x)


def contrastive_loss(image_embeds: jax.Array, text_embeds: jax.Array, log_scale: jax.Array,
                     caption_ids: jax.Array) -> jax.Array:
  """Symmetric InfoNCE with soft targets over identical captions.

  Args:
    image_embeds, text_embeds: (B, D), not normalised.
    log_scale: () learned log temperature (logits are scaled by exp(log_scale)).
    caption_ids: (B,) int, equal for identical captions.
  """
  img = image_embeds / jnp.linalg.norm(image_embeds, axis=-1, keepdims=True)
  txt = text_embeds / jnp.linalg.norm(text_embeds, axis=-1, keepdims=True)
  logits = jnp.exp(log_scale) * img @ txt.T  # (B, B)
  same = (caption_ids[:, None] == caption_ids[None, :]).astype(jnp.float32)
  targets = same / same.sum(-1, keepdims=True)  # symmetric: rows and columns alike
  i2t = optax.softmax_cross_entropy(logits, targets).mean()
  t2i = optax.softmax_cross_entropy(logits.T, targets).mean()
  return 0.5 * (i2t + t2i)


def with_layer_scale(params: dict, value: float) -> dict:
  """`params` with every ConvNeXt layer-scale `gamma` set to `value` (a from-scratch init)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, value) if path[-1].key == 'gamma' else x, params)


def lr_schedule(s: Settings) -> optax.Schedule:
  """Linear warmup to `s.lr`, cosine decay to 5% of it."""
  return optax.warmup_cosine_decay_schedule(0.0, s.lr, s.warmup_steps, s.steps, s.lr * 0.05)


def make_optimizer(s: Settings) -> optax.GradientTransformation:
  """AdamW (b2 0.98, as CLIP) with gradient clipping at 1; no decay on vectors (norms, gains, biases).

  The learning rate and weight decay are inputs of the compiled step (`inject_hyperparams`), so
  runs that differ only in them share one executable in JAX's compilation cache.
  """
  decay = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
  adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=s.lr, b2=0.98,
                                                 weight_decay=s.weight_decay, mask=decay)
  return optax.chain(optax.clip_by_global_norm(1.0), adamw)


def build_corpus(s: Settings, log: Callable[[str], None] = print):
  """(images uint8 (N, S, S, 3), tokens int32 (N, 77), caption ids int32 (N,)) of the corpus."""
  t0 = time.perf_counter()
  ds = shapes_corpus.ShapesCaptions('train', s.num_images, s.image_size, s.world_seed, s.patterned)
  examples = [ds[i] for i in range(len(ds))]
  captions = [ex['caption'] for ex in examples]
  unique = {c: i for i, c in enumerate(dict.fromkeys(captions))}
  tokens = tokenizer_lib.Tokenizer()(captions)
  # Only the columns up to the longest caption's end token (rounded up to 8) are kept: the text
  # tower is causal, so each caption's EOT features are those of its full 77-token row.
  length = min(tokens.shape[1], -(-int((tokens > 0).sum(1).max()) // 8) * 8)
  tokens = tokens[:, :length]
  log(f'clip pretraining: rendered {len(ds)} captioned images ({len(unique)} distinct captions) '
      f'in {time.perf_counter() - t0:.0f} s')
  return (np.stack([ex['image'] for ex in examples]), tokens,
          np.asarray([unique[c] for c in captions], np.int32))


def train(s: Settings, log: Callable[[str], None] = print, log_every: int = 50) -> dict:
  """Pretrains CLIP(s.variant) from scratch; returns its float32 numpy params."""
  images, tokens, caption_ids = build_corpus(s, log)
  model = clip.CLIP(s.variant)
  rng = jax.random.PRNGKey(s.seed)
  init_rng, rng = jax.random.split(rng)
  # jitted: eager init runs the forward op by op (29 s on 2 cores; 12 s compiled)
  init = jax.jit(clip.init_params, static_argnums=(0, 2))
  params = with_layer_scale(init(s.variant, init_rng, s.image_size), s.ls_init)
  tx = make_optimizer(s)
  opt_state = tx.init(params)
  schedule = lr_schedule(s)

  def loss_fn(params, img, tok, ids, key):
    image_embeds, text_embeds, log_scale = model.apply({'params': params}, normalize(augment(img, key)), tok)
    return contrastive_loss(image_embeds, text_embeds, log_scale, ids)

  @jax.jit
  def step(params, opt_state, img, tok, ids, key, lr):
    opt_state[1].hyperparams['learning_rate'] = lr
    loss, grads = jax.value_and_grad(loss_fn)(params, img, tok, ids, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    params = {**params, 'logit_scale': jnp.clip(params['logit_scale'], 0.0, MAX_LOG_SCALE)}
    return params, opt_state, loss

  order_rng = np.random.default_rng([s.seed, 1])
  order = np.concatenate([order_rng.permutation(len(images))
                          for _ in range(-(-s.steps * s.batch_size // len(images)))])
  t0, losses = time.perf_counter(), []
  for i in range(s.steps):
    idx = np.sort(order[i * s.batch_size:(i + 1) * s.batch_size])
    params, opt_state, loss = step(params, opt_state, images[idx], tokens[idx], caption_ids[idx],
                                   jax.random.fold_in(rng, i), schedule(i))
    if (i + 1) % log_every == 0 or i + 1 == s.steps:
      losses.append(float(loss))
      log(f'clip pretraining: step {i + 1}/{s.steps} loss {losses[-1]:.3f} '
          f'(ln B = {np.log(s.batch_size):.2f}) {time.perf_counter() - t0:.0f} s')
  return jax.tree.map(lambda x: np.asarray(x, np.float32), params)


def class_text(variant: str, params: dict) -> dict:
  """The TextClassifier of the world's 13 val classes under this CLIP, as jnp arrays:
  {'embeds' (K, S, D), 'valid' (K, S)} (14 VILD templates, synonyms)."""
  from ovsnet_jax.text import classifier  # pylint: disable=g-import-not-at-top
  text = classifier.TextClassifier.from_params(variant, params['text'])(shapes.class_names('val'))
  return {'embeds': jnp.asarray(text['embeds']), 'valid': jnp.asarray(text['valid'])}


def zero_shot(variant: str, params: dict, image_size: int, per_class: int = 20,
              seed: int = 0, patterned: bool = True, text: Optional[dict] = None) -> dict:
  """Zero-shot image classification on held-out single-concept images of every class.

  Class embeddings are the TextClassifier's (the 14 VILD templates, synonyms max-merged), as the
  segmenter uses them. A thing image is classified among the thing classes, a stuff image among
  the stuff classes (each image shows one thing on some stuff, or stuff alone).

  Returns:
    {'acc_seen', 'acc_unseen' (mean per-class accuracy, %), 'chance_things', 'chance_stuff' (%),
     'per_class': {name: accuracy %}}.
  """
  names = shapes.class_names('val')
  text = class_text(variant, params) if text is None else text
  embeds, valid = text['embeds'], text['valid']  # (K, S, D), (K, S)
  images, labels = shapes_corpus.zero_shot_set(per_class, image_size, seed, patterned)
  model = clip.CLIP(variant)
  encode = jax.jit(lambda p, x: model.apply({'params': p}, normalize(x), method=clip.CLIP.encode_image))
  feats = np.concatenate([np.asarray(encode(params, images[i:i + 64])) for i in range(0, len(images), 64)])
  feats = feats / np.linalg.norm(feats, axis=-1, keepdims=True)  # (N, D)
  sims = jnp.where(valid[None], jnp.einsum('nd,ksd->nks', feats, embeds), -jnp.inf).max(-1)  # (N, K)
  is_thing = np.asarray([i < len(shapes.THINGS) for i in range(len(names))])
  sims = np.where(is_thing[None] == is_thing[labels][:, None], np.asarray(sims), -np.inf)
  pred = sims.argmax(-1)
  per_class = {n[0]: float(100 * np.mean(pred[labels == k] == k)) for k, n in enumerate(names)}
  seen = shapes.seen_mask('val')
  return {'acc_seen': float(np.mean([a for a, s in zip(per_class.values(), seen) if s])),
          'acc_unseen': float(np.mean([a for a, s in zip(per_class.values(), seen) if not s])),
          'chance_things': 100 / len(shapes.THINGS), 'chance_stuff': 100 / len(shapes.STUFF),
          'per_class': per_class}


def segment_classifier(variant: str, params: dict, text: dict) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
  """FC-CLIP's out-of-vocabulary classification of given masks by a frozen CLIP.

  `text`: the TextClassifier dict ({'embeds' (K, S, D), 'valid' (K, S)}) of the classes. Returns a function (image float (S, S, 3) in [0, 255], masks (M, S, S) in {0, 1}) -> (M,) class
  indices into `text`'s classes: the masks resized to the res5 grid and binarised (logit > 0 of
  2 m - 1, `mask_pooling.mask_pool`), res5 averaged inside each, the CLIP head, then the class with
  the best synonym cosine (`classifier.synonym_max_logits`). An empty binarised mask pools to zero.
  """
  from ovsnet_jax.models import clip_convnext  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.models import mask_pooling  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.text import classifier  # pylint: disable=g-import-not-at-top
  text = {'embeds': jnp.asarray(text['embeds']), 'valid': jnp.asarray(text['valid'])}
  visual = clip_convnext.CLIPVisual(variant)
  vparams = {'params': params['visual']}

  @jax.jit
  def classify(image, masks):
    res5 = visual.apply(vparams, normalize(image[None]))['res5']  # (1, h, w, C5)
    pooled = mask_pooling.mask_pool(res5, 2.0 * masks[None] - 1.0)  # (1, M, C5)
    embeds = visual.apply(vparams, pooled, method=clip_convnext.CLIPVisual.head)  # (1, M, D)
    return jnp.argmax(classifier.synonym_max_logits(embeds, text, jnp.zeros(())), -1)[0]  # (M,)

  return lambda image, masks: np.asarray(classify(jnp.asarray(image, jnp.float32), jnp.asarray(masks, jnp.float32)))


def dense_zero_shot(variant: str, params: dict, image_size: int, num_images: int = 100,
                    seed: int = 0, patterned: bool = True, max_shapes: int = 4,
                    text: Optional[dict] = None) -> dict:
  """Segment-level zero-shot with ground-truth masks: the ceiling of the out-of-vocabulary branch.

  On `num_images` held-out scenes of the segmentation world ('val' split, every class), each
  ground-truth segment is classified as FC-CLIP's out-of-vocabulary branch classifies a predicted
  mask: the mask resized to the res5 grid and binarised (`mask_pooling.mask_pool`), the frozen
  CLIP's res5 features averaged inside it, the CLIP head applied, then the best of the TextClassifier's
  classes over the full 13-class vocabulary (`classifier.synonym_max_logits`). The segment is
  painted with that class and the semantic map scored as the evaluation scores a segmenter. A
  segmenter whose unseen classes come from this branch cannot beat these figures with perfect masks.

  Returns:
    {'mIoU', 'mIoU-seen', 'mIoU-unseen', 'hIoU', 'pACC'} (%), 'IoU' per class, 'chance' (the same
    images' `metrics.chance_metrics`) and 'num_images'.
  """
  from ovsnet_jax import metrics  # pylint: disable=g-import-not-at-top
  names = shapes.class_names('val')
  segment_classes = segment_classifier(variant, params, class_text(variant, params) if text is None else text)
  ds = shapes.ShapesPanoptic('val', num_images, image_size, seed, max_shapes, patterned)
  conf = np.zeros((len(names), len(names)), np.int64)  # (K, K) rows ground truth
  for i in range(num_images):
    ex = ds[i]
    ids = ex['segment_ids']
    masks = np.zeros((ds.max_shapes + 2, *ids.shape), np.float32)  # padded: one shape per scene size
    for m, seg in enumerate(ex['segments']):
      masks[m] = ids == seg['id']
    pred = segment_classes(ex['image'], masks)
    for m, seg in enumerate(ex['segments']):
      conf[seg['category'], pred[m]] += int(masks[m].sum())
  seen = shapes.seen_mask('val')
  res = metrics.segmentation_metrics(conf, [n[0] for n in names], seen)
  out = {k: round(res[k], 2) for k in ('mIoU', 'mIoU-seen', 'mIoU-unseen', 'hIoU', 'pACC')}
  out['IoU'] = {k: round(v, 1) for k, v in res['IoU'].items()}
  out['chance'] = {k: round(v, 2) for k, v in metrics.chance_metrics(conf, seen).items()}
  out['num_images'] = num_images
  return out


def params_sha256(params: dict) -> str:
  """sha256 over every param's path, shape and bytes (the checkpoint's identity)."""
  h = hashlib.sha256()
  for path, x in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: str(kv[0])):
    h.update(f'{jax.tree_util.keystr(path)}{x.shape}'.encode())
    h.update(np.ascontiguousarray(x, np.float32).tobytes())
  return h.hexdigest()


def report_path(ckpt_dir: str) -> str:
  return ckpt_dir.rstrip('/') + '.json'


def pretrain(s: Settings, out: str, log: Callable[[str], None] = print, eval_per_class: int = 20) -> dict:
  """Trains, evaluates zero-shot and writes `out` (converted-CLIP format) plus `<out>.json`."""
  t0 = time.perf_counter()
  params = train(s, log)
  train_s = time.perf_counter() - t0
  text = class_text(s.variant, params)  # encoded once for both reports
  report = {'settings': dataclasses.asdict(s), 'digest': s.digest(), 'train_seconds': round(train_s, 1),
            'zero_shot': zero_shot(s.variant, params, s.image_size, eval_per_class, s.world_seed + 1,
                                 s.patterned, text),
            'dense': dense_zero_shot(s.variant, params, s.image_size, 4 * eval_per_class, s.world_seed + 1,
                                     s.patterned, text=text)}
  config = {'variant': s.variant, 'source': f'ovsnet_jax.clip_pretraining:{s.digest()}',
            'sha256': params_sha256(params)}
  try:
    convert.write_checkpoint_dir(params, config, out)
  except ValueError:  # another process wrote the same settings first: keep theirs
    if not os.path.isfile(os.path.join(out, convert.CONFIG_NAME)):
      raise
  atomic_io.write_json(report, report_path(out), indent=2)
  zs = report['zero_shot']
  log(f"clip pretraining: {train_s:.0f} s; zero-shot accuracy on held-out images: seen classes "
      f"{zs['acc_seen']:.1f}%, unseen classes {zs['acc_unseen']:.1f}% (chance: things "
      f"{zs['chance_things']:.1f}%, stuff {zs['chance_stuff']:.1f}%); wrote {out}")
  log(dense_summary(report['dense']))
  return report


def dense_summary(dense: dict) -> str:
  """One line of `dense_zero_shot`'s figures against their chance level."""
  ch = dense['chance']
  return (f"clip pretraining: ground-truth segments classified by mask pooling (the out-of-vocabulary "
          f"branch's ceiling), {dense['num_images']} held-out scenes: mIoU-seen {dense['mIoU-seen']:.1f}, "
          f"mIoU-unseen {dense['mIoU-unseen']:.1f}, hIoU {dense['hIoU']:.1f} (chance {ch['mIoU-seen']:.1f} / "
          f"{ch['mIoU-unseen']:.1f} / {ch['hIoU']:.1f})")


def ensure_pretrained(s: Settings = Settings(), root: Optional[str] = None,
                      log: Callable[[str], None] = print) -> str:
  """The cached CLIP directory of `s`, pretrained first if it is not there yet."""
  out = checkpoint_dir(s, root)
  if os.path.isfile(os.path.join(out, convert.CONFIG_NAME)):
    return out
  log(f'clip pretraining: no cached CLIP at {out}; pretraining it (once)')
  pretrain(s, out, log)
  return out
