"""Times the deformable-attention sampling implementations (``ms_deform_attn.DEFORM_IMPLS``).

The default size is the pixel decoder's at a 1024^2 crop: levels 32^2, 64^2, 128^2 (strides 32,
16, 8), every position a query (encoder self-attention), B=8, 8 heads x 32, 4 points. Shrink it on
a CPU, e.g.:

  python launch/benchmark.py --mode=deform --batch=1 --levels=32,16,8 --iters=3

Figures per implementation: compile seconds and median milliseconds of the forward and of the
forward+backward (gradients for value, locations and weights; with --remat also under
jax.checkpoint, as ``MSDeformAttn(remat=True)`` runs it), plus an estimate of the largest
intermediate; an implementation whose estimate exceeds --max_gib is skipped, not run.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ovsnet_jax.models import ms_deform_attn as mda


def _parse(argv):
  parser = argparse.ArgumentParser(prog='benchmark --mode=deform')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--levels', default='32,64,128', help='square level sizes, low to high resolution')
  parser.add_argument('--heads', type=int, default=8)
  parser.add_argument('--head_dim', type=int, default=32)
  parser.add_argument('--points', type=int, default=4)
  parser.add_argument('--impls', default=','.join(mda.DEFORM_IMPLS))
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--iters', type=int, default=10)
  parser.add_argument('--max_gib', type=float, default=16.0, help='skip implementations estimated above this')
  parser.add_argument('--remat', action='store_true', help='also time fwd+bwd under jax.checkpoint')
  parser.add_argument('--seed', type=int, default=0)
  return parser.parse_args(argv)


def _largest_intermediate_gib(impl, b, lq, m, dh, shapes, p, itemsize):
  if impl in ('gather', 'window'):  # gathered corner rows (B, Lq, M, L*P*4, Dh) / windows (B, Lq, M, L*P, 4*Dh)
    elems = b * lq * m * len(shapes) * p * 4 * dh
  elif impl == 'gather_corners':  # one corner's rows (B, Lq, M, L*P, Dh)
    elems = b * lq * m * len(shapes) * p * dh
  else:  # dense sampling matrix of the largest level (B, Lq, M, h, w)
    elems = b * lq * m * max(h * w for h, w in shapes)
  return elems * itemsize / 2 ** 30


def _time(fn, args, iters):
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return compile_s, 1e3 * float(np.median(times))


def run(argv) -> dict:
  """Parses benchmark flags (see module docstring) and returns a dict of figures."""
  args = _parse(argv)
  dtype = jnp.dtype(args.dtype)
  sizes = [int(s) for s in args.levels.split(',')]
  shapes = tuple((s, s) for s in sizes)
  b, m, dh, p = args.batch, args.heads, args.head_dim, args.points
  lq = s_total = sum(h * w for h, w in shapes)
  keys = jax.random.split(jax.random.PRNGKey(args.seed), 3)
  value = jax.random.normal(keys[0], (b, s_total, m, dh), dtype)
  loc = jax.random.uniform(keys[1], (b, lq, m, len(shapes), p, 2), jnp.float32, -0.1, 1.1)
  weights = jax.nn.softmax(jax.random.normal(keys[2], (b, lq, m, len(shapes) * p)), -1)
  weights = weights.reshape(b, lq, m, len(shapes), p).astype(dtype)
  cot = jnp.ones((b, lq, m * dh), dtype)

  figures = {'device': str(jax.devices()[0].device_kind), 'backend': jax.default_backend(),
             'batch': b, 'levels': sizes, 'heads': m, 'head_dim': dh, 'points': p, 'queries': lq,
             'dtype': args.dtype, 'iters': args.iters}
  for impl in args.impls.split(','):
    gib = _largest_intermediate_gib(impl, b, lq, m, dh, shapes, p, dtype.itemsize)
    figures[f'{impl}_largest_intermediate_gib'] = float(f'{gib:.4g}')
    if gib > args.max_gib:
      figures[f'{impl}_skipped'] = f'largest intermediate ~{gib:.4g} GiB > --max_gib={args.max_gib}'
      continue
    fwd = jax.jit(lambda v, l, w, impl=impl: mda.ms_deform_attn_core(v, shapes, l, w, impl))

    def loss(v, l, w, impl=impl):
      out = mda.ms_deform_attn_core(v, shapes, l, w, impl)
      return jnp.vdot(out.astype(jnp.float32), cot.astype(jnp.float32))
    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    compile_f, ms_f = _time(fwd, (value, loc, weights), args.iters)
    compile_b, ms_b = _time(bwd, (value, loc, weights), args.iters)
    figures.update({f'{impl}_fwd_ms': round(ms_f, 3), f'{impl}_fwd_bwd_ms': round(ms_b, 3),
                    f'{impl}_compile_fwd_s': round(compile_f, 2),
                    f'{impl}_compile_fwd_bwd_s': round(compile_b, 2)})
    if args.remat:
      bwd_remat = jax.jit(jax.grad(jax.checkpoint(loss), argnums=(0, 1, 2)))
      figures[f'{impl}_remat_fwd_bwd_ms'] = round(_time(bwd_remat, (value, loc, weights), args.iters)[1], 3)
    stats = jax.devices()[0].memory_stats() or {}
    if 'peak_bytes_in_use' in stats:
      figures[f'{impl}_peak_gib_so_far'] = round(stats['peak_bytes_in_use'] / 2 ** 30, 3)
  return figures
