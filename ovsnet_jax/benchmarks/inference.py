"""OVSNet inference throughput: images/s of the jitted semantic-segmentation forward.

  python launch/benchmark.py --mode=inference                       # OVSNet-B, 8 x 1024^2, Q 100, K 150
  python launch/benchmark.py --mode=inference --preset=large        # OVSNet-L, Q 250
  python launch/benchmark.py --mode=inference --preset=smoke --batch=2 --size=128   # CPU check

Random weights (timing does not depend on them). ``--output``: 'labels' (argmax of the per-class
scores at input resolution, what evaluation needs), 'scores' ((B, H, W, K) float32 scores) or
'features' (model outputs only). Reports compile time, mean/median step time, img/s and the
GFA diagnostics of the last batch.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

PRESETS = {'base': 'configs.ovsnet_base', 'large': 'configs.ovsnet_large', 'smoke': 'configs.smoke'}


def parse(argv):
  p = argparse.ArgumentParser(prog='benchmark --mode=inference')
  p.add_argument('--preset', choices=sorted(PRESETS), default='base')
  p.add_argument('--config_arg', default=None, help="the config's ':arg', e.g. fusion=none")
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--size', type=int, default=1024, help='square input side (multiple of 32)')
  p.add_argument('--queries', type=int, default=0, help='0 -> the preset\'s')
  p.add_argument('--layers', type=int, default=0, help='decoder layers; 0 -> the preset\'s')
  p.add_argument('--classes', type=int, default=150)
  p.add_argument('--synonyms', type=int, default=4)
  p.add_argument('--dtype', default='', help="compute dtype override ('' -> the preset's)")
  p.add_argument('--output', choices=('labels', 'scores', 'features'), default='labels')
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--warmup', type=int, default=2)
  return p.parse_args(argv)


def make_config(args):
  import importlib  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if root not in sys.path and os.path.isdir(os.path.join(root, 'configs')):
    sys.path.insert(0, root)  # `configs` importable when run from launch/benchmark.py
  module = importlib.import_module(PRESETS[args.preset])
  config = module.get_config(args.config_arg) if args.config_arg else module.get_config()
  m = config.model
  if args.queries:
    m.decoder.num_queries = args.queries
  if args.layers:
    m.decoder.num_layers = args.layers
  if args.dtype:
    m.compute_dtype = args.dtype
  return config


def run(argv) -> dict:
  """Runs the benchmark; returns a dict of figures."""
  from ovsnet_jax import inference  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.models import clip, ovsnet  # pylint: disable=g-import-not-at-top
  args = parse(argv)
  if args.size % 32:
    raise ValueError(f'--size: expected a multiple of 32, got {args.size}')
  config = make_config(args)
  model = ovsnet.build_model(config)
  d = clip.get_variant(config.model.clip_variant).embed_dim
  params = jax.jit(lambda k: ovsnet.init_params(config, k))(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  e = rng.normal(size=(args.classes, args.synonyms, d)).astype(np.float32)
  text = {'embeds': jnp.asarray(e / np.linalg.norm(e, axis=-1, keepdims=True)),
          'valid': jnp.ones((args.classes, args.synonyms), bool)}
  seen = jnp.asarray(rng.uniform(size=args.classes) < 0.5)
  images = jnp.asarray(rng.uniform(0, 255, (args.batch, args.size, args.size, 3)), jnp.float32)

  def forward(params, images, text, seen):
    if args.output == 'features':
      out = inference.model_outputs(model, params, images)
      return out['fused_embeds'][-1], out['pred_masks'][-1], out.get('gfa', {})
    scores = inference.semantic_logits(model, params, images, text, seen)  # (B, H, W, K)
    return scores.argmax(-1).astype(jnp.int32) if args.output == 'labels' else scores

  fn = jax.jit(forward)
  t0 = time.perf_counter()
  compiled = fn.lower(params, images, text, seen).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(args.warmup):
    jax.block_until_ready(compiled(params, images, text, seen))
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, images, text, seen))
    times.append(time.perf_counter() - t0)
  figures = {
      'mode': 'inference', 'preset': args.preset, 'config_arg': args.config_arg or '',
      'device': jax.devices()[0].device_kind, 'batch': args.batch, 'size': args.size,
      'queries': config.model.decoder.num_queries, 'layers': config.model.decoder.num_layers,
      'classes': args.classes, 'fusion': config.model.fusion, 'dtype': config.model.compute_dtype,
      'output': args.output, 'compile_s': round(compile_s, 2), 'step_s_mean': round(float(np.mean(times)), 4),
      'step_s_median': round(float(np.median(times)), 4),
      'img_per_s': round(args.batch / float(np.median(times)), 3)}
  if config.model.fusion == 'gfa':
    _, out = jax.jit(lambda p, x: model.apply({'params': p}, x, text, train=False))(params, images)
    figures['gfa_num_singular'] = int(out['gfa']['num_singular'])
    figures['gfa_max_condition'] = float(out['gfa']['condition'].max())
    figures['gfa_max_spectral_bound'] = float(out['gfa']['spectral_bound'].max())
  return figures
