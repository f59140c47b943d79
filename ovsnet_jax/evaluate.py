"""Semantic-segmentation evaluation: model scores -> original-size labels -> confusion matrix on device.

Protocol (FC-CLIP / detectron2, IMPLEMENTATION_NOTES.md 2g-2h): ResizeShortestEdge(800, 1333)
(Cityscapes 1024, 2560), pad to a multiple of 32, whole-image inference; the per-class scores at
padded input resolution are cropped to the resized image and resized bilinearly
(align_corners=False, as `sem_seg_postprocess`) to the original size, then argmax. mIoU uses
detectron2's current formula (`metrics.segmentation_metrics`).

`semantic_fn(params, images (B, Hp, Wp, 3) 0..255, text) -> (B, Hp, Wp, K)` scores at padded input
resolution is the model-side piece (`ovsnet_jax.inference.semantic_logits` for OVSNet).

Test-time precision and padding (`config.eval`): the model runs in `eval.compute_dtype` (float32,
as detectron2's evaluation, whatever `model.compute_dtype` training used) and each batch is padded
to its largest image rounded up to a multiple of 32 (`eval.pad_mode='multiple'`); the canvases of
'orientation' / 'fixed' are faster options that change the model's input (more padding).
"""
import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ovsnet_jax import aot
from ovsnet_jax import metrics


def _source_coords(out_size: int, in_size: jax.Array, scale_to: jax.Array) -> tuple:
  """PyTorch bilinear align_corners=False: output index -> (i0, i1, frac) in a length-in_size axis.

  `scale_to` is the (dynamic) length the input is resized to; outputs past it are don't-care.
  """
  scale = in_size.astype(jnp.float32) / scale_to.astype(jnp.float32)
  src = jnp.maximum((jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5, 0.0)  # (N,)
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
  i1 = jnp.minimum(i0 + 1, in_size - 1)
  return i0, i1, src - i0.astype(jnp.float32)


def resize_to_original(scores: jax.Array, image_size: jax.Array, orig_size: jax.Array,
                       out_shape: Sequence[int]) -> jax.Array:
  """`sem_seg_postprocess` of one image with static shapes.

  Args:
    scores: (Hp, Wp, C) at padded input resolution.
    image_size: int (2,) resized image (h, w) inside the padding (dynamic).
    orig_size: int (2,) original (H, W) (dynamic), <= out_shape.
    out_shape: static (Hl, Wl) canvas; pixels past orig_size are don't-care.
  Returns:
    (Hl, Wl, C): scores[:h, :w] resized bilinearly (align_corners=False) to (H, W).
  """
  y0, y1, wy = _source_coords(out_shape[0], image_size[0], orig_size[0])
  x0, x1, wx = _source_coords(out_shape[1], image_size[1], orig_size[1])
  rows = scores[y0] * (1 - wy)[:, None, None] + scores[y1] * wy[:, None, None]  # (Hl, Wp, C)
  return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]  # (Hl, Wl, C)


def predict_labels(scores: jax.Array, image_size: jax.Array, orig_size: jax.Array,
                   out_shape: Sequence[int], class_chunk: int = 128) -> jax.Array:
  """Argmax of the original-size scores, resized `class_chunk` classes at a time (bounded memory).

  Args:
    scores: (B, Hp, Wp, K); image_size, orig_size: int (B, 2).
  Returns:
    int32 (B, Hl, Wl) predicted class per pixel.
  """
  k = scores.shape[-1]
  chunk = min(class_chunk, k)
  # Static slices, the last one shorter: no padded copy of the (B, Hp, Wp, K) scores (padding K=150
  # to 256 doubled eval's peak memory).
  bounds = [(c, min(c + chunk, k)) for c in range(0, k, chunk)]

  def one_image(s, isz, osz):  # (Hp, Wp, K) -> (Hl, Wl)
    best = jnp.full(tuple(out_shape), -jnp.inf, s.dtype)
    arg = jnp.zeros(tuple(out_shape), jnp.int32)
    for lo, hi in bounds:
      part = resize_to_original(s[..., lo:hi], isz, osz, out_shape)  # (Hl, Wl, hi - lo)
      part_best = part.max(-1)
      better = part_best > best
      best, arg = jnp.where(better, part_best, best), jnp.where(better, part.argmax(-1).astype(jnp.int32) + lo, arg)
    return arg

  return jax.vmap(one_image)(scores, image_size, orig_size)


def make_eval_step(semantic_fn: Callable, num_classes: int,
                   class_chunk: int = 128) -> tuple[Callable, Callable]:
  """The two jit-able halves of an evaluation step.

  Jitted separately, the model compiles once per image canvas and only the cheap postprocess once
  per label canvas:

  - `scores_fn(params, images, text) -> (B, Hp, Wp, K)` (the model),
  - `confusion_fn(scores, batch) -> int32 (K, K)` (resize to original size, argmax, counts).
  """
  def confusion_fn(scores, batch):
    pred = predict_labels(scores, batch['image_size'], batch['orig_size'], batch['sem_seg'].shape[1:],
                          class_chunk)  # (B, Hl, Wl)
    label = jnp.where(batch['valid'][:, None, None], batch['sem_seg'], -1)  # padding examples: ignore
    return metrics.confusion_matrix(pred, label, num_classes)
  return semantic_fn, confusion_fn


def run_evaluation(step: tuple[Callable, Callable], params: Any, text: Any, batches: Iterable[dict],
                   mesh: Mesh, num_classes: int, *, total: Optional[int] = None,
                   progress: bool = True) -> np.ndarray:
  """Runs `make_eval_step`'s pair over host batches (sharded over `mesh`); int64 (K, K) confusion.

  The progress bar counts images (`total`: the number of images; padding examples do not count).
  """
  import tqdm  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.input import pipeline  # pylint: disable=g-import-not-at-top
  scores_fn = jax.jit(step[0], out_shardings=NamedSharding(mesh, P('data')))
  confusion_fn = jax.jit(step[1], out_shardings=NamedSharding(mesh, P()))
  programs = {}  # image canvas -> the compiled model, checked once against the memory it will get

  def scores_program(images):
    key = (images.shape, images.dtype)
    if key not in programs:
      compiled = scores_fn.lower(params, images, text).compile()
      b, h, w = images.shape[:3]
      aot.check_program_fits(compiled, f'evaluation at batch {b} on a {h}x{w} canvas',
                             'lower config.eval.batch_size (the memory grows with it; FC-CLIP evaluates one '
                             'image per device) or the test size (config.data.eval_min_size / eval_max_size).')
      programs[key] = compiled
    return programs[key]

  acc = metrics.ConfusionAccumulator(num_classes)
  show = progress and jax.process_index() == 0
  pending = None  # (confusion, pixels, images) of the batch still running
  with tqdm.tqdm(total=total, disable=not show, desc='eval', unit='img', dynamic_ncols=True) as bar:

    def finish(conf, pixels, images):
      acc.add(jax.block_until_ready(conf), pixels)
      bar.update(images)

    for host_batch in batches:
      batch = pipeline.make_global(host_batch, mesh)
      scores = scores_program(batch['image'])(params, batch['image'], text)  # (B, Hp, Wp, K)
      conf = confusion_fn(scores, batch)
      del scores  # the largest buffer: freed as soon as its confusion is computed
      # Dispatch is asynchronous: wait for the previous batch now, so that one batch runs while the host
      # prepares the next, queued batches (each with its score buffer) cannot pile up, and the bar counts
      # finished images rather than dispatched ones.
      if pending is not None:
        finish(*pending)
      pending = (conf, int(np.prod(batch['sem_seg'].shape)),
                 int(np.sum(host_batch['valid'])) * jax.process_count())  # images, not batches
    if pending is not None:
      finish(*pending)
  return acc.result()


def eval_sizes(config, dataset: str) -> tuple[int, int]:
  """(min, max) test resize: the dataset's (FC-CLIP) one, or data.eval_min_size / eval_max_size."""
  if config.data.get('eval_size_from_dataset', True) and dataset != 'shapes':
    from ovsnet_jax.input import datasets  # pylint: disable=g-import-not-at-top
    return tuple(datasets.dataset_info(dataset).test_size)
  return config.data.eval_min_size, config.data.eval_max_size


def dataset_vocabulary(config, dataset: str, reader: Any) -> tuple[list, np.ndarray]:
  """(class names, seen mask vs the training vocabulary) of an evaluation dataset."""
  from ovsnet_jax.text import vocab  # pylint: disable=g-import-not-at-top
  if getattr(reader, 'class_names', None):
    names = [list(c) for c in reader.class_names]
  else:
    from ovsnet_jax.input import datasets  # pylint: disable=g-import-not-at-top
    info = datasets.dataset_info(dataset)
    names = (vocab.read_class_file(reader.class_names_file) if info.class_names is None
             else vocab.load_class_names(info.class_names))
  if config.data.train == 'shapes':
    from ovsnet_jax.input import shapes  # pylint: disable=g-import-not-at-top
    train_names = shapes.class_names('train')
  else:
    from ovsnet_jax.input import datasets  # pylint: disable=g-import-not-at-top
    train_names = vocab.load_class_names(datasets.dataset_info(config.data.train).class_names)
  return names, vocab.seen_mask(names, train_names)


def eval_reader(config, dataset: str):
  """The semantic reader of the evaluation split of `dataset` ('shapes' -> held-out 'val')."""
  from ovsnet_jax.input import pipeline  # pylint: disable=g-import-not-at-top
  kwargs = dict(config.data.get('shapes', {})) if dataset == 'shapes' else {}
  split = 'val'
  return pipeline.make_reader(dataset, config.data.root, split, semantic=True, **kwargs)


def evaluate_dataset(config, semantic_fn: Callable, params: Any, text_fn: Callable, mesh: Mesh,
                     dataset: Optional[str] = None, reader: Any = None, progress: bool = True) -> dict:
  """Evaluates `semantic_fn` on `config.eval.dataset` (or `dataset`).

  Returns `metrics.segmentation_metrics` (scalars, 'IoU'/'ACC' dicts) plus
  'info': {'dataset', 'num_images', 'eval_size'}.

  Args:
    text_fn: class names (list of synonym lists) -> text classifier dict.
  """
  from ovsnet_jax.input import pipeline  # pylint: disable=g-import-not-at-top
  dataset = dataset or config.eval.dataset
  semantic_fn = with_eval_precision(semantic_fn, config)
  reader = eval_reader(config, dataset) if reader is None else reader
  names, seen = dataset_vocabulary(config, dataset, reader)
  text = dict(text_fn(names))
  text['seen'] = np.asarray(seen, bool)  # the ensemble's alpha (seen) / beta (unseen) choice
  text = jax.device_put(text, NamedSharding(mesh, P()))
  min_size, max_size = eval_sizes(config, dataset)
  e = config.eval
  ds = pipeline.eval_dataset(
      reader, global_batch_size=e.batch_size, min_size=min_size, max_size=max_size,
      size_divisibility=config.data.size_divisibility, pad_value=tuple(config.model.pixel_mean),
      pad_mode=e.get('pad_mode', 'multiple'), label_bucket=e.get('label_bucket', 128),
      label_canvas=tuple(e.get('label_canvas', (0, 0))), max_images=e.max_images,
      num_workers=config.data.get('eval_num_workers', 0))
  n = len(reader) if e.max_images <= 0 else min(e.max_images, len(reader))
  step = make_eval_step(semantic_fn, len(names), e.get('class_chunk', 128))
  conf = run_evaluation(step, params, text, ds, mesh, len(names), total=n, progress=progress)
  split = seen if seen.any() and not seen.all() else None
  res = metrics.segmentation_metrics(conf, [c[0] for c in names], split)
  res['chance'] = metrics.chance_metrics(conf, split)
  res['info'] = {'dataset': dataset, 'num_images': n, 'eval_size': [min_size, max_size]}
  return res


EVAL_DTYPES = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class OVSNetSemanticFn:
  """`semantic_fn` of an OVSNet module (`inference.semantic_logits`; seen mask from text['seen'])."""
  model: Any

  def __call__(self, params, images, text):
    from ovsnet_jax import inference  # pylint: disable=g-import-not-at-top
    return inference.semantic_logits(self.model, params, images, text)

  def with_compute_dtype(self, dtype: str) -> 'OVSNetSemanticFn':
    """The same model computing in `dtype` (params are unchanged: float32, cast per matmul)."""
    import ml_collections  # pylint: disable=g-import-not-at-top
    cfg = ml_collections.ConfigDict(self.model.config.as_configdict())
    cfg.compute_dtype = dtype
    return OVSNetSemanticFn(self.model.clone(config=ml_collections.FrozenConfigDict(cfg)))


def ovsnet_semantic_fn(model: Any) -> OVSNetSemanticFn:
  """`semantic_fn` of an OVSNet module; `evaluate_dataset` runs it in `config.eval.compute_dtype`."""
  return OVSNetSemanticFn(model)


def with_eval_precision(semantic_fn: Callable, config) -> Callable:
  """`semantic_fn` in `config.eval.compute_dtype` when it is an OVSNet one (others are left as is)."""
  dtype = config.eval.get('compute_dtype', 'float32')
  if dtype not in EVAL_DTYPES:
    raise ValueError(f'config.eval.compute_dtype: expected one of {EVAL_DTYPES}, got {dtype!r}')
  return semantic_fn.with_compute_dtype(dtype) if isinstance(semantic_fn, OVSNetSemanticFn) else semantic_fn


def checkpoint_step_dir(path: str) -> str:
  """A training workdir, its `checkpoints/` or a `checkpoints/<step>` folder -> the step folder."""
  if os.path.isdir(os.path.join(path, 'state')):
    return path
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.join(path, 'checkpoints')
  steps = sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []
  if not steps:
    raise FileNotFoundError(f'{path}: no checkpoint found (expected <workdir>/checkpoints/<step>/state '
                            'written by launch/train.py)')
  return os.path.join(path, str(steps[-1]))


def load_params(path: str) -> dict:
  """OVSNet params of the latest checkpoint under `path` (see `checkpoint_step_dir`), on the host.

  Verifies the checkpoint's per-array checksums (when it has them) and refuses params with NaN or
  infinite values (a diverged run): both raise `cli.UserError` naming the checkpoint.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from ovsnet_jax import checkpointing, cli  # pylint: disable=g-import-not-at-top
  step_dir = checkpoint_step_dir(os.path.abspath(path))
  state_dir = os.path.join(step_dir, 'state')
  try:
    with ocp.StandardCheckpointer() as ckptr:
      state = ckptr.restore(state_dir)
  except Exception as e:  # pylint: disable=broad-except (orbax/tensorstore raise many types on damage)
    raise cli.UserError(f'{step_dir}: cannot read the checkpoint ({type(e).__name__}: '
                        f'{str(e).strip().splitlines()[0][:300] if str(e).strip() else ""}); pass an older '
                        '<workdir>/checkpoints/<step> folder') from e
  if 'params' not in state:
    raise ValueError(f'{state_dir}: expected a train state with "params", got keys {sorted(state)}')
  sums_file = os.path.join(step_dir, 'checksums', 'metadata')
  if os.path.isfile(sums_file):
    with open(sums_file) as f:
      expected = checkpointing.canonical_keys(json.load(f)['state'])
    expected = {k: v for k, v in expected.items() if k.startswith("['params']")}  # what eval uses
    try:
      checkpointing.verify_checksums(expected, checkpointing.array_checksums({'params': state['params']}), state_dir)
    except checkpointing.CheckpointError as e:
      raise cli.UserError(f'{e}: the checkpoint is damaged; pass an older <workdir>/checkpoints/<step> '
                          'folder') from e
  bad = {jax.tree_util.keystr(p): int(np.size(x) - np.isfinite(x).sum())
         for p, x in jax.tree_util.tree_flatten_with_path(state['params'])[0]
         if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.isfinite(x).all()}
  if bad:
    first = next(iter(bad))
    raise cli.UserError(f'{step_dir}: the params hold {sum(bad.values())} NaN/infinite values in {len(bad)} '
                        f'arrays (first: {first}): the run diverged; evaluate an earlier checkpoint')
  return state['params']


def evaluate_params(config, model: Any, params: Any, classify: Callable, mesh: Mesh) -> dict:
  """The trainer's periodic evaluation on `config.eval.dataset`; scalars + per-class dicts."""
  return evaluate_dataset(config, ovsnet_semantic_fn(model), params, classify, mesh,
                          progress=jax.process_index() == 0)


def format_table(results: dict, per_class: bool = False) -> str:
  """Plain-text table of the summary figures (and per-class IoU)."""
  keys = [k for k in ('mIoU', 'fwIoU', 'mACC', 'pACC', 'mIoU-seen', 'mIoU-unseen', 'hIoU') if k in results]
  info = results.get('info', {})
  lines = [f"{info.get('dataset', '')}: {info.get('num_images', '?')} images",
           ' | '.join(f'{k:>11s}' for k in keys), ' | '.join(f'{results[k]:11.2f}' for k in keys)]
  chance = results.get('chance')
  if chance:  # a random labelling with the ground truth's class frequencies (metrics.chance_metrics)
    lines.append(' | '.join(f'{chance[k]:11.2f}' if k in chance else ' ' * 11 for k in keys) + ' | chance')
  if per_class:
    width = max(len(n) for n in results['IoU'])
    lines += [f'{n:<{width}s}  IoU {v:6.2f}  ACC {results["ACC"][n]:6.2f}' for n, v in results['IoU'].items()]
  return '\n'.join(lines)


def _json_ready(x):
  if isinstance(x, dict):
    return {str(k): _json_ready(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_ready(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return None if np.isnan(x) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


def write_results(results: dict, path: str) -> None:
  """JSON with NaN (classes without ground truth) written as null; atomic (`atomic_io.OutputError`)."""
  from ovsnet_jax import atomic_io  # pylint: disable=g-import-not-at-top
  atomic_io.write_json(_json_ready(results), path, indent=1, sort_keys=True)
