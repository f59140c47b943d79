"""Train-step benchmark: img/s, compile time and peak device memory of one OVSNet training step.

Default: OVSNet-B (convnext_base_w_320 CLIP, random weights) at 1024x1024, batch 8, 100 queries,
100 padded targets with 12 box masks per image (as the PyTorch peer `shared/bench/hf_mask2former_peer.py`),
the full train step (forward, Hungarian matching, point-sampled losses on all layers, backward,
AdamW) jitted with donation on a one-axis `data` mesh over all local devices.

  python launch/benchmark.py --mode=train
  python launch/benchmark.py --mode=train --clip_variant=test_tiny --size=128 --batch=2 --queries=16 \
      --decoder_layers=3 --pixel_layers=1 --num_points=1024 --steps=3  # CPU-sized
"""
import argparse
import time

import jax
import numpy as np

from configs import common
from ovsnet_jax import sharding
from ovsnet_jax import train


def parse(argv) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='benchmark --mode=train')
  p.add_argument('--clip_variant', default='convnext_base_w_320')
  p.add_argument('--size', type=int, default=1024, help='square crop size')
  p.add_argument('--batch', type=int, default=8, help='global batch')
  p.add_argument('--queries', type=int, default=100)
  p.add_argument('--classes', type=int, default=133, help='training vocabulary size K')
  p.add_argument('--max_masks', type=int, default=100, help='padded targets M per image')
  p.add_argument('--masks_per_image', type=int, default=12, help='valid box targets per image')
  p.add_argument('--num_points', type=int, default=12544)
  p.add_argument('--decoder_layers', type=int, default=9)
  p.add_argument('--pixel_layers', type=int, default=6)
  p.add_argument('--dtype', default='bfloat16', help='model compute dtype')
  p.add_argument('--steps', type=int, default=10, help='timed steps')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps after compilation')
  p.add_argument('--shard_optimizer_state', action='store_true')
  return p.parse_args(argv)


def bench_config(a: argparse.Namespace):
  c = common.get_base_config()
  c.model = common.get_model_config(a.clip_variant)
  c.model.compute_dtype = a.dtype
  c.model.decoder.num_queries, c.model.decoder.num_layers = a.queries, a.decoder_layers
  c.model.pixel_decoder.num_layers = a.pixel_layers
  c.train.batch_size, c.train.num_points = a.batch, a.num_points
  c.train.shard_optimizer_state = a.shard_optimizer_state
  c.data.crop_size, c.data.max_masks = a.size, a.max_masks
  return c


def random_batch(a: argparse.Namespace, seed: int = 0) -> dict:
  """Images and `masks_per_image` random boxes per image, in the CONTRACTS.md batch layout."""
  rng = np.random.default_rng(seed)
  s, m = a.size, a.max_masks
  masks = np.zeros((a.batch, m, s, s), bool)
  for b in range(a.batch):
    for j in range(min(a.masks_per_image, m)):
      y0, x0 = rng.integers(0, max(s - s // 8, 1), 2)
      h, w = rng.integers(max(s // 16, 1), max(s // 2, 2), 2)
      masks[b, j, y0:y0 + h, x0:x0 + w] = True
  valid = np.zeros((a.batch, m), bool)
  valid[:, :a.masks_per_image] = True
  return {'image': rng.uniform(0, 255, (a.batch, s, s, 3)).astype(np.float32), 'masks': masks,
          'classes': rng.integers(0, a.classes, (a.batch, m)).astype(np.int32), 'valid': valid}


def random_text(k: int, dim: int, seed: int = 0) -> dict:
  e = np.random.default_rng(seed).normal(size=(k, 1, dim)).astype(np.float32)
  return {'embeds': e / np.linalg.norm(e, axis=-1, keepdims=True), 'valid': np.ones((k, 1), bool)}


def run(argv) -> dict:
  from ovsnet_jax.models import clip, ovsnet  # pylint: disable=g-import-not-at-top
  a = parse(argv)
  config = bench_config(a)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(a.batch, mesh)
  rep = sharding.replicated(mesh)
  model = ovsnet.build_model(config)
  clip_shapes = clip.param_shapes(a.clip_variant)
  init_fn = lambda key: train.create_train_state(ovsnet.init_params(config, key), config)
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  state_sh = sharding.state_shardings(abstract, mesh, a.shard_optimizer_state)
  state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.PRNGKey(0))
  host = random_batch(a)
  batch = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in host.items()}
  text = jax.device_put(random_text(a.classes, clip.get_variant(a.clip_variant).embed_dim), rep)
  rng = jax.device_put(jax.random.PRNGKey(1), rep)
  step = sharding.jit_train_step(train.make_step_fn(model, config), state_sh, mesh)

  t0 = time.perf_counter()
  lowered = step.lower(state, batch, rng, text)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  for _ in range(a.warmup):
    state, metrics = compiled(state, batch, rng, text)
  jax.block_until_ready(state)
  times = []
  for _ in range(a.steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch, rng, text)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t)
  sec = float(np.median(times))
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  trainable, _ = train.split_frozen(abstract.params)
  stats = [d.memory_stats() or {} for d in jax.local_devices()]
  peak = max((s.get('peak_bytes_in_use', 0) for s in stats), default=0)
  return {
      'mode': 'train', 'device': jax.devices()[0].device_kind, 'num_devices': jax.device_count(),
      'clip_variant': a.clip_variant, 'size': a.size, 'batch': a.batch, 'queries': a.queries,
      'decoder_layers': a.decoder_layers, 'pixel_layers': a.pixel_layers, 'num_points': a.num_points,
      'dtype': a.dtype, 'lower_s': t1 - t0, 'compile_s': t2 - t1, 'train_s_per_step': sec,
      'train_img_per_s': a.batch / sec, 'step_times_s': [round(t, 4) for t in times],
      'peak_mem_GiB': peak / 2**30 if peak else None, 'loss': float(metrics['loss']),
      'params_total': count(abstract.params), 'params_trainable': count(trainable),
      'params_clip': count(clip_shapes.get('visual', {})),
  }
