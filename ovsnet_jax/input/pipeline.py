"""grain input pipelines (training LSJ, evaluation) and host -> global device arrays.

Training graph (per host):
  MapDataset.source(reader)[process_index::process_count] .shuffle(seed) .repeat()
  .random_map(TrainTransform) .batch(global // process_count, drop_remainder=True)
  .to_iter_dataset() [.mp_prefetch(num_workers)]
Shuffling is a seeded index permutation, different every epoch; augmentation rngs derive from
(seed, host, element index). So the iterator is fully described by its position:
`it.get_state()` / `it.set_state(state)` resume mid-epoch with the very same batches
(checkpoint it with orbax next to the train state).

Host batches are compact: images uint8 and the masks as a per-pixel target index (`mask_index`
int16 (B, H, W), -1 = no target); `to_device_batch` builds the CONTRACTS.md batch on device
(image float32 0..255, `masks` bool (B, M, H, W)), sharded `NamedSharding(mesh, P('data'))` from
host-local data with `jax.make_array_from_process_local_data`. At 1024^2 and M = 100 this moves
5 MB per image through the worker queues and to the device instead of 112 MB.

Evaluation: ResizeShortestEdge(min, max) + pad, original-size labels, deterministic order, per-host
slicing of an index range padded to a whole number of global batches (padding examples have
`valid` False and all-ignore labels). `pad_mode`: 'multiple' pads each batch to its largest image
rounded to `size_divisibility` (detectron2 at batch 1, one compile per shape); 'orientation' pads to
one of two canvases (landscape (min, max) or portrait (max, min), rounded), so at most two compiled
shapes; 'fixed' pads images to (max, max) and labels to `label_canvas` (needed with several hosts,
whose arrays must agree in shape). Labels are padded to a multiple of `label_bucket` with ignore.

DECISION: grain directly over the dataset files (the random-access readers of input/datasets),
not tensorflow-datasets builders (manual_dir -> ArrayRecord). Measured here (2 shared cores, 32
COCO-layout 640x480 JPEGs of ~128 KiB + panoptic PNGs, 3 passes):
- decode: tfds 4.9.10 ArrayRecord data source 52 img/s/core, our COCO reader 40-43 img/s/core
  (same run); read + decode is ~25% of a training example's CPU cost (12 of 46 ms, benchmark
  `train_stage_ms`), so tfds would gain ~5% end to end.
- install: tfds + array_record + deps = 334 MB without TensorFlow, but building an Image-feature
  dataset then fails ("No module named 'tensorflow'"); with tensorflow-cpu 2.21: 1.8 GB (TF 1.3 GB).
  grain over files adds nothing.
- memory: RSS after the 96 reads 89 MiB (tfds + TF) vs 48 MiB (reader).
- tfds also needs a preparation pass writing a second copy of every dataset (COCO: ~19 GB).
"""
import dataclasses
import math
from typing import Any, Iterator, Optional, Sequence

import grain
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ovsnet_jax.input import IGNORE_LABEL
from ovsnet_jax.input import transforms as T

PAD_MODES = ('multiple', 'orientation', 'fixed')


def host_info(process_index: Optional[int] = None, process_count: Optional[int] = None) -> tuple[int, int]:
  """(process_index, process_count), from JAX unless given; validated."""
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if not 0 <= pi < pc:
    raise ValueError(f'process_index: expected 0 <= index < process_count = {pc}, got {pi}')
  return pi, pc


def per_host_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f'batch_size: the global batch {global_batch_size} must be divisible by the '
                     f'number of hosts {process_count}')
  return global_batch_size // process_count


def example_targets(example: dict, max_masks: int, keep_empty: bool = False) -> dict[str, np.ndarray]:
  """Target index map of a panoptic or semantic reader example (see transforms.panoptic_index_map)."""
  if 'segment_ids' in example and 'segments' in example:
    return T.panoptic_index_map(example['segment_ids'], example['segments'], max_masks, keep_empty)
  if 'sem_seg' in example:
    return T.panoptic_index_map(example['sem_seg'], T.semantic_segments(example['sem_seg']), max_masks)
  raise ValueError(f"example {example.get('file_name', '?')}: expected 'segment_ids' and 'segments' "
                   f"(panoptic) or 'sem_seg' (semantic), got keys {sorted(example)}")


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """Reader example -> {'image' uint8 (S,S,3), 'mask_index' int16 (S,S), 'classes', 'valid' (M,)}.

  keep_cropped_segments: FC-CLIP's mapper (coco_panoptic_new_baseline_dataset_mapper) keeps every
  non-crowd segment, also one whose mask is empty after the crop (it stays a valid target with an
  all-False mask); False drops such targets and renumbers the rest (`transforms.compact_targets`).
  """
  crop_size: int = 1024
  scale_range: tuple = (0.1, 2.0)
  max_masks: int = 100
  color_aug: bool = True
  keep_cropped_segments: bool = True

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    keep = self.keep_cropped_segments
    t = example_targets(example, self.max_masks, keep_empty=keep)
    image = example['image']
    if self.color_aug:  # pointwise: applied at the (smaller) original size, before the resize
      image = T.color_aug_ssd(image, rng)
    image, index = T.large_scale_jitter(image, t['index'], rng, crop_size=self.crop_size,
                                        scale_range=self.scale_range)
    if keep:
      t = {'index': index.astype(np.int16), 'classes': t['classes'], 'valid': t['valid']}
    else:
      t = T.compact_targets(index, t['classes'], t['valid'])
    return {'image': image, 'mask_index': t['index'], 'classes': t['classes'], 'valid': t['valid']}


def _read_options(read_threads: int, prefetch: int) -> grain.ReadOptions:
  """Threads and buffer of the (per process) element prefetch; grain's default is 16 and 500."""
  return grain.ReadOptions(num_threads=max(read_threads, 0), prefetch_buffer_size=max(prefetch, 0))


def _with_workers(ds: grain.IterDataset, num_workers: int, buffer_size: int) -> grain.IterDataset:
  """grain multiprocessing prefetch; 0 workers = in process."""
  if num_workers <= 0:
    return ds
  if not flags.FLAGS.is_parsed():  # grain reads its absl flags in the workers; outside an absl
    flags.FLAGS.mark_as_parsed()   # app (tests, notebooks) they would be unparsed -> defaults.
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=buffer_size))


def train_dataset(reader: Sequence[dict], *, global_batch_size: int, crop_size: int = 1024,
                  scale_range: Sequence[float] = (0.1, 2.0), max_masks: int = 100,
                  color_aug: bool = True, keep_cropped_segments: bool = True, seed: int = 0,
                  num_workers: int = 0, worker_buffer_size: int = 2, read_threads: int = 2,
                  prefetch: int = 4, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> grain.IterDataset:
  """Infinite, shuffled, augmented per-host batches of (global_batch_size // process_count)."""
  pi, pc = host_info(process_index, process_count)
  batch = per_host_batch(global_batch_size, pc)
  if len(reader) < pc:
    raise ValueError(f'reader: {len(reader)} examples cannot be split over {pc} hosts')
  ds = grain.MapDataset.source(reader)[pi::pc]
  ds = ds.shuffle(seed=seed).repeat()
  transform = TrainTransform(crop_size, tuple(scale_range), max_masks, color_aug, keep_cropped_segments)
  ds = ds.random_map(transform, seed=seed * 1_000_003 + 7919 * (pi + 1))
  ds = ds.batch(batch, drop_remainder=True).to_iter_dataset(_read_options(read_threads, prefetch))
  return _with_workers(ds, num_workers, worker_buffer_size)


# Where each `config.data` field is used: the training pipeline (`train_dataset_from_config`), the
# reader (`train._reader`, `evaluate.eval_reader`) or the evaluation (`evaluate.evaluate_dataset`).
# tests/test_pipeline.py flips every training field and checks that the pipeline changes.
TRAIN_DATA_FIELDS = ('crop_size', 'scale_range', 'max_masks', 'color_aug', 'keep_cropped_segments',
                     'num_workers', 'worker_buffer_size', 'read_threads', 'prefetch')
READER_DATA_FIELDS = ('train', 'root', 'shapes')
EVAL_DATA_FIELDS = ('eval_min_size', 'eval_max_size', 'eval_size_from_dataset', 'eval_num_workers',
                    'size_divisibility')


def train_dataset_from_config(reader: Sequence[dict], config) -> grain.IterDataset:
  """`train_dataset` with every training field of `config.data` (TRAIN_DATA_FIELDS) and `train`.

  The training loop builds its pipeline here, so no `data` field is silently ignored.
  """
  d = config.data
  return train_dataset(
      reader, global_batch_size=config.train.batch_size, crop_size=d.crop_size,
      scale_range=tuple(d.scale_range), max_masks=d.max_masks, color_aug=d.color_aug,
      keep_cropped_segments=d.keep_cropped_segments, seed=config.seed, num_workers=d.num_workers,
      worker_buffer_size=d.worker_buffer_size, read_threads=d.read_threads, prefetch=d.prefetch)


def eval_canvas(min_size: int, max_size: int, size_divisibility: int, orientation: str) -> tuple[int, int]:
  """Image canvas that holds every ResizeShortestEdge(min, max) output of that orientation."""
  short, long = T.round_up(min_size, size_divisibility), T.round_up(max_size, size_divisibility)
  return {'landscape': (short, long), 'portrait': (long, short), 'square': (long, long)}[orientation]


@dataclasses.dataclass(frozen=True)
class EvalExample:
  """Global index -> resized example; indices past the reader are invalid padding examples."""
  reader: Any
  min_size: int = 800
  max_size: int = 1333
  size_divisibility: int = 32
  pad_value: tuple = (0.0, 0.0, 0.0)

  def __call__(self, index: int) -> dict:
    n = len(self.reader)
    ex = self.reader[min(index, n - 1)]
    if 'sem_seg' not in ex:
      raise ValueError(f"example {ex.get('file_name', '?')}: evaluation needs a semantic reader "
                       f"('sem_seg'), got keys {sorted(ex)}")
    out = T.eval_resize(ex['image'], ex['sem_seg'], min_size=self.min_size, max_size=self.max_size,
                        size_divisibility=self.size_divisibility, pad_value=self.pad_value)
    out['valid'] = np.asarray(index < n)
    if index >= n:
      out['sem_seg'] = np.full_like(out['sem_seg'], IGNORE_LABEL)
    out['file_name'] = ex.get('file_name', '')
    return out


@dataclasses.dataclass(frozen=True)
class EvalCollate:
  """List of EvalExample outputs -> batch dict with padded images and labels."""
  pad_mode: str = 'multiple'
  min_size: int = 800
  max_size: int = 1333
  size_divisibility: int = 32
  label_bucket: int = 128
  label_canvas: tuple = (0, 0)
  pad_value: tuple = (0.0, 0.0, 0.0)

  def image_canvas(self, sizes: np.ndarray) -> tuple[int, int]:
    if self.pad_mode == 'multiple':
      return tuple(int(v) for v in sizes.max(0))
    if self.pad_mode == 'fixed':
      return eval_canvas(self.min_size, self.max_size, self.size_divisibility, 'square')
    for orientation in ('landscape', 'portrait', 'square'):
      canvas = eval_canvas(self.min_size, self.max_size, self.size_divisibility, orientation)
      if np.all(sizes <= np.asarray(canvas)):
        return canvas
    raise ValueError(f'eval images {sizes.tolist()} exceed the canvas for max_size {self.max_size}')

  def label_size(self, examples: list[dict]) -> tuple[int, int]:
    biggest = np.max([ex['sem_seg'].shape for ex in examples], 0)
    if self.pad_mode != 'fixed':
      return tuple(T.round_up(v, self.label_bucket) for v in biggest)
    for ex in examples:
      if ex['sem_seg'].shape[0] > self.label_canvas[0] or ex['sem_seg'].shape[1] > self.label_canvas[1]:
        raise ValueError(f"{ex['file_name']}: label {ex['sem_seg'].shape} exceeds "
                         f'eval.label_canvas {tuple(self.label_canvas)}')
    return tuple(self.label_canvas)

  def __call__(self, examples: Sequence[dict]) -> dict:
    examples = list(examples)
    canvas = self.image_canvas(np.asarray([ex['image'].shape[:2] for ex in examples]))
    label_size = self.label_size(examples)
    return {
        'image': np.stack([T.pad_image(ex['image'], canvas, self.pad_value) for ex in examples]),
        'sem_seg': np.stack([T.pad_label(ex['sem_seg'], label_size) for ex in examples]),
        'orig_size': np.stack([ex['orig_size'] for ex in examples]),
        'image_size': np.stack([ex['image_size'] for ex in examples]),
        'valid': np.stack([ex['valid'] for ex in examples]),
    }


def eval_dataset(reader: Sequence[dict], *, global_batch_size: int = 1, min_size: int = 800,
                 max_size: int = 1333, size_divisibility: int = 32,
                 pad_value: Sequence[float] = (0.0, 0.0, 0.0), pad_mode: str = 'multiple',
                 label_bucket: int = 128, label_canvas: Sequence[int] = (0, 0),
                 max_images: int = 0, num_workers: int = 0, read_threads: int = 2,
                 prefetch: int = 2, process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> grain.IterDataset:
  """One deterministic pass over `reader` (or its first `max_images`), per-host batches.

  Every host yields the same number of batches; examples past the end are padding with
  `valid` False. Batch: {'image' f32 (B,Hp,Wp,3), 'sem_seg' int32 (B,Hl,Wl) original-size labels
  padded with ignore, 'orig_size' int32 (B,2), 'image_size' int32 (B,2), 'valid' bool (B,)}.
  """
  if pad_mode not in PAD_MODES:
    raise ValueError(f'eval pad_mode: expected one of {PAD_MODES}, got {pad_mode!r}')
  pi, pc = host_info(process_index, process_count)
  if pc > 1 and pad_mode != 'fixed':
    raise ValueError("eval pad_mode: several hosts need pad_mode='fixed' (equal array shapes on "
                     f'every host), got {pad_mode!r}')
  batch = per_host_batch(global_batch_size, pc)
  n = len(reader) if max_images <= 0 else min(max_images, len(reader))
  if n == 0:
    raise ValueError('reader: the evaluation dataset is empty')
  padded = math.ceil(n / global_batch_size) * global_batch_size
  pad_value = tuple(float(v) for v in np.broadcast_to(np.asarray(pad_value, np.float64), (3,)))
  example = EvalExample(_Prefix(reader, n), min_size, max_size, size_divisibility, pad_value)
  collate = EvalCollate(pad_mode, min_size, max_size, size_divisibility, label_bucket,
                        tuple(label_canvas), pad_value)
  ds = grain.MapDataset.range(padded)[pi::pc].map(example).batch(batch, batch_fn=collate)
  return _with_workers(ds.to_iter_dataset(_read_options(read_threads, prefetch)), num_workers, 1)


@dataclasses.dataclass(frozen=True)
class _Prefix:
  """The first `n` examples of a reader."""
  reader: Any
  n: int

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, index: int) -> dict:
    return self.reader[index]


def make_global(host_batch: dict, mesh: Mesh, axis: str = 'data') -> dict:
  """Host-local numpy batch -> global jax.Arrays sharded along `axis` over `mesh`."""
  sharding = NamedSharding(mesh, P(axis))
  local_devices = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])
  out = {}
  for key, value in host_batch.items():
    value = np.asarray(value)
    if value.dtype.kind in 'OUS':
      continue  # strings (file names) stay on the host
    if value.shape[0] % local_devices:
      raise ValueError(f'batch[{key!r}]: host batch {value.shape[0]} is not divisible by the '
                       f'{local_devices} local devices of the mesh')
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def expand_masks(mask_index: jax.Array, max_masks: int) -> jax.Array:
  """int (B, H, W) target index -> bool (B, M, H, W) masks (on device)."""
  return mask_index[:, None, :, :].astype(jnp.int32) == jnp.arange(max_masks)[None, :, None, None]


def _device_targets(image: jax.Array, mask_index: jax.Array, max_masks: int) -> tuple[jax.Array, jax.Array]:
  """uint8 (B, H, W, 3) -> float32 0..255; target index -> masks (B, M, H, W)."""
  return image.astype(jnp.float32), expand_masks(mask_index, max_masks)


def to_device_batch(host_batch: dict, mesh: Mesh, axis: str = 'data') -> dict:
  """Training host batch -> CONTRACTS.md batch on device: image, masks (B,M,H,W), classes, valid."""
  arrays = make_global(host_batch, mesh, axis)
  max_masks = arrays['classes'].shape[1]
  sharding = NamedSharding(mesh, P(axis))
  image, masks = jax.jit(_device_targets, static_argnums=2, out_shardings=(sharding, sharding))(
      arrays['image'], arrays['mask_index'], max_masks)
  return {'image': image, 'masks': masks, 'classes': arrays['classes'], 'valid': arrays['valid']}


def device_batches(iterator: Iterator[dict], mesh: Mesh, axis: str = 'data') -> Iterator[dict]:
  """Wraps a training iterator into one of CONTRACTS.md device batches."""
  for host_batch in iterator:
    yield to_device_batch(host_batch, mesh, axis)


def make_reader(name: str, root: str, split: str, *, semantic: bool = False, **kwargs):
  """Reader by name: 'shapes' (generated; kwargs to ShapesPanoptic) or any `get_dataset` name."""
  if name == 'shapes':
    from ovsnet_jax.input import shapes  # pylint: disable=g-import-not-at-top
    return shapes.get_shapes(split, semantic=semantic, **kwargs)
  from ovsnet_jax.input.datasets import get_dataset  # pylint: disable=g-import-not-at-top
  return get_dataset(name, root, split)
