"""Input-pipeline throughput per host (CPU): training LSJ at 1024 and evaluation, img/s per workers.

  python launch/benchmark.py --mode=pipeline --workers=0,1,2 --num_images=64

Writes a COCO-Panoptic-layout (training) and an ADE20K-150-layout (evaluation) dataset of realistic
640x480 JPEGs (textured, quality 90, 4:2:0, ~COCO file sizes) to a temporary folder with
`ovsnet_jax.input.layouts`, reads them back with the real readers and times the grain pipelines.
The first batch (process start-up, imports) is not timed. Figures are per host and depend on the
CPU cores available: per-worker throughput extrapolates to the workers needed for a target rate.
"""
import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

from ovsnet_jax.input import layouts
from ovsnet_jax.input import pipeline


def _texture_jpegs(truth: list, seed: int) -> float:
  """Rewrites each JPEG with natural-image-like texture; returns the mean file size in KiB."""
  rng = np.random.default_rng(seed)
  sizes = []
  for ex in truth:
    base = ex['pixels'].astype(np.float32)
    h, w = base.shape[:2]
    coarse = rng.normal(0, 25, size=(h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    fine = rng.normal(0, 12, size=(h, w, 3))
    pixels = np.clip(base + coarse + fine, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(ex['file_name'], quality=90)
    sizes.append(os.path.getsize(ex['file_name']) / 1024)
  return float(np.mean(sizes))


def _throughput(ds, batch_size: int, num_batches: int) -> float:
  it = iter(ds)
  next(it)  # start-up, not timed
  start = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  return batch_size * num_batches / (time.perf_counter() - start)


def _stage_ms(reader, crop_size: int, n: int = 8) -> dict:
  """Mean ms per example of each training stage, in process."""
  from ovsnet_jax.input import transforms as T  # pylint: disable=g-import-not-at-top
  times = {'read_decode': 0.0, 'targets': 0.0, 'colour': 0.0, 'lsj': 0.0, 'compact': 0.0}
  for i in range(n):
    rng = np.random.default_rng(i)
    t0 = time.perf_counter()
    ex = reader[i % len(reader)]
    t1 = time.perf_counter()
    t = pipeline.example_targets(ex, 100)
    t2 = time.perf_counter()
    image = T.color_aug_ssd(ex['image'], rng)
    t3 = time.perf_counter()
    image, index = T.large_scale_jitter(image, t['index'], rng, crop_size=crop_size)
    t4 = time.perf_counter()
    T.compact_targets(index, t['classes'], t['valid'])
    t5 = time.perf_counter()
    for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
      times[key] += 1000 * dt / n
  return {k: round(v, 1) for k, v in times.items()}


def run(argv=None) -> dict:
  p = argparse.ArgumentParser(prog='benchmark --mode=pipeline')
  p.add_argument('--workers', default='0,1,2', help='comma-separated worker counts')
  p.add_argument('--num_images', type=int, default=32)
  p.add_argument('--batch_size', type=int, default=4, help='per-host training batch')
  p.add_argument('--num_batches', type=int, default=8, help='timed training batches per setting')
  p.add_argument('--eval_images', type=int, default=24, help='timed evaluation images per setting')
  p.add_argument('--crop_size', type=int, default=1024)
  p.add_argument('--read_threads', type=int, default=1)
  p.add_argument('--target', type=float, default=48.0, help='img/s to reach (3x the PyTorch peer)')
  p.add_argument('--root', default='', help='dataset folder (default: a temporary one)')
  a = p.parse_args(argv)
  from ovsnet_jax.input.datasets import get_dataset  # pylint: disable=g-import-not-at-top
  workers = [int(w) for w in a.workers.split(',')]
  with tempfile.TemporaryDirectory() as tmp:
    root = a.root or tmp
    coco = layouts.write_coco_panoptic(root, a.num_images, size=(480, 640), seed=0, split='train')
    ade = layouts.write_ade150(root, a.num_images, size=(480, 640), seed=1, split='val')
    kib = _texture_jpegs(coco, 2)
    _texture_jpegs(ade, 3)
    train_reader = get_dataset('coco_panoptic', root, 'train')
    eval_reader = get_dataset('ade150', root, 'val')
    out = {'cpu_count': os.cpu_count(), 'jpeg_kib': round(kib, 1), 'image_size': [480, 640],
           'crop_size': a.crop_size, 'train_img_s': {}, 'eval_img_s': {}}
    out['train_stage_ms'] = _stage_ms(train_reader, a.crop_size)
    for w in workers:
      ds = pipeline.train_dataset(train_reader, global_batch_size=a.batch_size, crop_size=a.crop_size,
                                  num_workers=w, read_threads=a.read_threads, process_index=0,
                                  process_count=1)
      out['train_img_s'][w] = round(_throughput(ds, a.batch_size, a.num_batches), 2)
      ds = pipeline.eval_dataset(eval_reader, num_workers=w, read_threads=a.read_threads,
                                 max_images=a.eval_images + 1, pad_value=(122.8, 116.7, 104.1),
                                 pad_mode='orientation', process_index=0, process_count=1)
      out['eval_img_s'][w] = round(_throughput(ds, 1, a.eval_images), 2)
  # Per-worker rate: the best img/s per process seen (0 workers = the main process alone). On an
  # oversubscribed machine more workers do not add throughput, so the best single rate is the
  # per-core figure to extrapolate from.
  per_worker = max(v / max(w, 1) for w, v in out['train_img_s'].items())
  out['train_img_s_per_worker'] = round(per_worker, 2)
  out['workers_for_target'] = int(np.ceil(a.target / per_worker))
  out['single_process_train_img_s'] = out['train_img_s'].get(0)
  out['target_img_s'] = a.target
  out['note'] = ('per-host figures from a shared %d-core CPU; per-worker throughput is per core when '
                 'workers <= cores' % os.cpu_count())
  return out
