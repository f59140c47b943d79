"""Criterion benchmark: matching + point-sampled losses of all layers, forward and backward.

Random model outputs (L+1 layers of (B, Q, K+1) logits and (B, Q, S/4, S/4) mask logits) and
`masks_per_image` random box targets out of `max_masks` padded ones, as the train benchmark.
Each `--budgets` entry is a `train.sampled_masks_per_image` (0 = every padded target slot
point-sampled, what the criterion did before the budget); they run interleaved, and the CPU time
(process time: robust on a shared machine) and wall time per call are reported for each.

  python launch/benchmark.py --mode=criterion --size=256 --batch=1          # CPU, 0 vs 32
  python launch/benchmark.py --mode=criterion --size=1024 --batch=2 --topology=v5e:2x2
      # compile only, for one chip of a TPU topology (libtpu, no TPU): temp/argument memory

`compile_for_memory(args, topology)` is the entry other tools call for the memory figures.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ovsnet_jax.losses import criterion


def parse(argv) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='benchmark --mode=criterion')
  p.add_argument('--size', type=int, default=256, help='square input size (masks at size/4)')
  p.add_argument('--batch', type=int, default=1)
  p.add_argument('--queries', type=int, default=100)
  p.add_argument('--classes', type=int, default=133)
  p.add_argument('--max_masks', type=int, default=100)
  p.add_argument('--masks_per_image', type=int, default=12)
  p.add_argument('--layers', type=int, default=10, help='predictions L+1')
  p.add_argument('--num_points', type=int, default=12544)
  p.add_argument('--budgets', default='0,32', help='comma-separated sampled_masks_per_image')
  p.add_argument('--point_rng', default='auto', choices=('threefry', 'rbg', 'auto'))
  p.add_argument('--steps', type=int, default=3, help='timed calls per budget')
  p.add_argument('--topology', default='', help="e.g. 'v5e:2x2': compile for its first chip")
  a = p.parse_args(argv)
  if a.size % 4 or a.masks_per_image > a.max_masks:
    p.error('--size must be a multiple of 4 and --masks_per_image <= --max_masks')
  return a


def train_cfg(a: argparse.Namespace, per_image: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1,
      num_points=a.num_points, oversample_ratio=3.0, importance_sample_ratio=0.75,
      sampled_masks_per_image=per_image, point_rng=a.point_rng))


def loss_and_grads(cfg):
  """(out, targets, rng) -> (loss, d loss / d out): what the train step computes of the criterion."""
  def fn(out, targets, rng):
    return jax.value_and_grad(lambda o: criterion.set_criterion(o, targets, rng, cfg)[0])(out)
  return fn


def abstract_inputs(a: argparse.Namespace) -> tuple:
  f32 = jnp.float32
  h = a.size // 4
  out = {'pred_logits': jax.ShapeDtypeStruct((a.layers, a.batch, a.queries, a.classes + 1), f32),
         'pred_masks': jax.ShapeDtypeStruct((a.layers, a.batch, a.queries, h, h), f32)}
  targets = {'masks': jax.ShapeDtypeStruct((a.batch, a.max_masks, a.size, a.size), jnp.bool_),
             'classes': jax.ShapeDtypeStruct((a.batch, a.max_masks), jnp.int32),
             'valid': jax.ShapeDtypeStruct((a.batch, a.max_masks), jnp.bool_)}
  return out, targets, jax.ShapeDtypeStruct((2,), jnp.uint32)


def random_inputs(a: argparse.Namespace, seed: int = 0) -> tuple:
  rng = np.random.default_rng(seed)
  (out, targets, _), s = abstract_inputs(a), a.size
  out = {k: rng.normal(size=v.shape).astype(np.float32) * 3 for k, v in out.items()}
  masks = np.zeros(targets['masks'].shape, bool)
  for b in range(a.batch):
    for j in range(a.masks_per_image):
      y0, x0 = rng.integers(0, s - s // 8, 2)
      hh, ww = rng.integers(max(s // 16, 1), s // 2, 2)
      masks[b, j, y0:y0 + hh, x0:x0 + ww] = True
  valid = np.zeros(targets['valid'].shape, bool)
  valid[:, :a.masks_per_image] = True
  targets = {'masks': masks, 'valid': valid,
             'classes': rng.integers(0, a.classes, valid.shape).astype(np.int32)}
  return out, targets, np.asarray(jax.random.PRNGKey(seed))


def compile_for_memory(a: argparse.Namespace, topology: str, per_image: int) -> dict:
  """Compiles the criterion (value and grads) for the first chip of a TPU topology (libtpu)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  device = topologies.get_topology_desc(topology_name=topology, platform='tpu').devices[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  args = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      abstract_inputs(a))
  t0 = time.perf_counter()
  compiled = jax.jit(loss_and_grads(train_cfg(a, per_image))).lower(*args).compile()
  mem = compiled.memory_analysis()
  gib = lambda n: round(n / 2**30, 3)
  return {'sampled_masks_per_image': per_image, 'compile_s': round(time.perf_counter() - t0, 1),
          'temp_GiB': gib(mem.temp_size_in_bytes), 'argument_GiB': gib(mem.argument_size_in_bytes),
          'output_GiB': gib(mem.output_size_in_bytes)}


def run(argv) -> dict:
  a = parse(argv)
  budgets = [int(b) for b in a.budgets.split(',')]
  figures = {'mode': 'criterion', 'size': a.size, 'batch': a.batch, 'queries': a.queries,
             'max_masks': a.max_masks, 'masks_per_image': a.masks_per_image, 'layers': a.layers,
             'num_points': a.num_points, 'point_rng': a.point_rng}
  if a.topology:
    figures['topology'] = a.topology
    figures['per_budget'] = [compile_for_memory(a, a.topology, b) for b in budgets]
    return figures
  inputs = jax.device_put(random_inputs(a))
  fns = {}
  for b in budgets:
    t0 = time.perf_counter()
    fns[b] = jax.jit(loss_and_grads(train_cfg(a, b))).lower(*inputs).compile()
    jax.block_until_ready(fns[b](*inputs))
    figures[f'compile_s_{b}'] = round(time.perf_counter() - t0, 2)
  cpu, wall = {b: [] for b in budgets}, {b: [] for b in budgets}
  for _ in range(a.steps):  # interleaved
    for b in budgets:
      c0, w0 = time.process_time(), time.perf_counter()
      loss, _ = jax.block_until_ready(fns[b](*inputs))
      cpu[b].append(time.process_time() - c0)
      wall[b].append(time.perf_counter() - w0)
      figures[f'loss_{b}'] = float(loss)
  for b in budgets:
    figures[f'cpu_s_{b}'] = round(float(np.median(cpu[b])), 3)
    figures[f'wall_s_{b}'] = round(float(np.median(wall[b])), 3)
  base = budgets[0]
  for b in budgets[1:]:
    figures[f'cpu_speedup_{b}_vs_{base}'] = round(figures[f'cpu_s_{base}'] / figures[f'cpu_s_{b}'], 2)
  return figures
