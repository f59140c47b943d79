"""Benchmark of the frozen CLIP ConvNeXt image trunk (`CLIPVisual.__call__`: res2..res5).

Usage (via launch/benchmark.py):
  python launch/benchmark.py --mode=trunk --variant=convnext_base_w_320 --batch=8 --size=1024 \
    --dtype=bf16 --iters=20

Random float32 params (as in the model, cast to the compute dtype inside each op), one jit, warm-up
calls, then `iters` timed calls. FLOPs: XLA's own count of the compiled program
(`jax.jit(f).lower(...).compile().cost_analysis()['flops']`) and an analytic count of the
convolutions and linear layers (2 x multiply-adds; LayerNorm/GELU not counted).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ovsnet_jax.models import clip
from ovsnet_jax.models import clip_convnext

DTYPES = {'bf16': jnp.bfloat16, 'fp32': jnp.float32}


def analytic_flops(variant: str, batch: int, size: int) -> float:
  """2 x multiply-adds of the stem, downsampling convs and ConvNeXt blocks for (batch, size, size)."""
  v = clip.get_variant(variant)
  hw = (size // 4) ** 2
  macs = hw * v.widths[0] * 3 * 16  # stem conv 4x4
  for i, (c, depth) in enumerate(zip(v.widths, v.depths)):
    hw = (size // 2 ** (i + 2)) ** 2
    if i > 0:
      macs += hw * c * v.widths[i - 1] * 4  # downsample conv 2x2
    macs += depth * hw * c * (49 + 8 * c)  # dwconv 7x7 + Linear C->4C + Linear 4C->C
  return 2.0 * macs * batch


def xla_flops(compiled) -> float:
  """FLOPs of a compiled program from XLA's cost analysis (dict, or list of dicts on old jax)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def parse(argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='benchmark.py --mode=trunk')
  parser.add_argument('--variant', default='convnext_base_w_320',
                      choices=[k for k, v in clip.CLIP_VARIANTS.items() if v.has_visual])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--size', type=int, default=1024)
  parser.add_argument('--dtype', choices=sorted(DTYPES), default='bf16')
  parser.add_argument('--dwconv', choices=clip_convnext.DWCONV_IMPLS, default='auto',
                      help='depthwise-conv formulation (clip_convnext.DepthwiseConv)')
  parser.add_argument('--iters', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  args = parser.parse_args(argv)
  if args.size % 32 or args.size <= 0:
    parser.error(f'--size must be a positive multiple of 32, got {args.size}')
  if args.batch <= 0 or args.iters <= 0 or args.warmup < 0:
    parser.error('--batch and --iters must be positive, --warmup non-negative')
  return args


def run(argv) -> dict:
  """Runs the benchmark; returns its figures (img/s, TFLOP/s, compile time, ...)."""
  args = parse(argv)
  model = clip_convnext.CLIPVisual(args.variant, dtype=DTYPES[args.dtype], dwconv=args.dwconv)
  images = jnp.asarray(np.random.default_rng(0).standard_normal(
      (args.batch, args.size, args.size, 3), np.float32))  # (B, H, W, 3)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), images[:1, :32, :32])
  forward = jax.jit(model.apply)

  start = time.perf_counter()
  compiled = forward.lower(params, images).compile()
  compile_s = time.perf_counter() - start
  for _ in range(args.warmup):
    jax.block_until_ready(compiled(params, images))
  start = time.perf_counter()
  for _ in range(args.iters):
    out = compiled(params, images)
  jax.block_until_ready(out)
  step_s = (time.perf_counter() - start) / args.iters

  flops_xla = xla_flops(compiled)
  flops_analytic = analytic_flops(args.variant, args.batch, args.size)
  return {
      'mode': 'trunk', 'variant': args.variant, 'batch': args.batch, 'size': args.size,
      'dtype': args.dtype, 'dwconv': args.dwconv, 'iters': args.iters, 'device': str(jax.devices()[0].device_kind),
      'compile_s': round(compile_s, 3), 'step_ms': round(1e3 * step_s, 3),
      'img_per_s': round(args.batch / step_s, 3),
      'flops_xla': flops_xla, 'flops_analytic': flops_analytic,
      'tflops_per_s_xla': round(flops_xla / step_s / 1e12, 4),
      'tflops_per_s_analytic': round(flops_analytic / step_s / 1e12, 4),
      'res5_shape': list(out['res5'].shape),
  }
