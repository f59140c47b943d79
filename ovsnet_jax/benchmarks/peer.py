"""OVSNet vs its PyTorch peer in one run: same size, batch, device and precision, interleaved.

The peer is HF transformers' Mask2Former (`Mask2FormerForUniversalSegmentation`) on a ConvNeXt
backbone of the same widths and depths as our CLIP trunk (ConvNeXt-B: 128..1024, 3-3-27-3),
frozen (backbone and pixel-decoder encoder input projections, as `shared/bench/
hf_mask2former_peer.py`), Hungarian matching and point-sampled losses (12544 points) on all
10 predictions, AdamW + grad-norm clipping 0.01. Ours: the full OVSNet train step of
`benchmarks/train.py` (frozen CLIP trunk, GFA, Proxy Calibration, AdamW) on the same random
boxes (`masks_per_image` real targets of `max_masks` padded), and for inference our jitted
forward with per-pixel class scores (`--inference_output`) vs the peer's forward (no
post-processing). Random weights. Each round runs: peer train, ours train, peer inference, ours
inference; medians over `--rounds`. CPU: fp32 (torch threads = `--threads`, 0 = all cores).

  python launch/benchmark.py --mode=peer --size=256 --batch=1            # CPU, the issue's figures
  python launch/benchmark.py --mode=peer --clip_variant=test_tiny --size=64 --queries=8 \
      --decoder_layers=2 --pixel_layers=1 --num_points=256 --rounds=1    # smoke

`--pieces` also times our CLIP trunk, our forward (train mode) and the criterion (matching, losses
and their gradients) alone, to show where our step time goes.
"""
import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ovsnet_jax.benchmarks import train as train_bench


def parse(argv) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='benchmark --mode=peer')
  p.add_argument('--clip_variant', default='convnext_base_w_320',
                 help='our CLIP; the peer gets a ConvNeXt of the same widths and depths')
  p.add_argument('--size', type=int, default=256)
  p.add_argument('--batch', type=int, default=1)
  p.add_argument('--queries', type=int, default=100)
  p.add_argument('--classes', type=int, default=133)
  p.add_argument('--max_masks', type=int, default=100, help='our padded targets per image')
  p.add_argument('--masks_per_image', type=int, default=12)
  p.add_argument('--num_points', type=int, default=12544)
  p.add_argument('--decoder_layers', type=int, default=9, help='ours; the peer gets this + 1 '
                 "(HF counts predictions: decoder_layers=10 is 9 layers)")
  p.add_argument('--pixel_layers', type=int, default=6)
  p.add_argument('--inference_output', choices=('labels', 'features'), default='labels',
                 help="ours: 'labels' = argmax of per-pixel class scores, 'features' = outputs only")
  p.add_argument('--rounds', type=int, default=3, help='timed interleaved rounds')
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0 = all cores)')
  p.add_argument('--pieces', action='store_true', help='also time our trunk/forward/criterion')
  a = p.parse_args(argv)
  if a.size % 32:
    p.error(f'--size: expected a multiple of 32, got {a.size}')
  a.dtype, a.steps, a.shard_optimizer_state = 'float32', a.rounds, False  # for train_bench
  return a


def build_peer(a, host):
  """The HF Mask2Former peer, its optimizer and a (train_step, infer) pair of closures."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import ConvNextConfig, Mask2FormerConfig, Mask2FormerForUniversalSegmentation  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.models import clip  # pylint: disable=g-import-not-at-top
  v = clip.get_variant(a.clip_variant)
  if a.threads:
    torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  stages = [f'stage{i + 1}' for i in range(len(v.depths))]
  backbone = ConvNextConfig(depths=list(v.depths), hidden_sizes=list(v.widths), out_features=stages)
  cfg = Mask2FormerConfig(backbone_config=backbone, num_queries=a.queries, num_labels=a.classes,
                          decoder_layers=a.decoder_layers + 1, encoder_layers=a.pixel_layers,
                          train_num_points=a.num_points, use_auxiliary_loss=True)
  model = Mask2FormerForUniversalSegmentation(cfg)
  for name, param in model.named_parameters():
    if 'backbone' in name or 'encoder.embeddings' in name or 'pixel_level_module.encoder' in name:
      param.requires_grad_(False)
  trainable = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05)
  x = torch.from_numpy(host['image'].transpose(0, 3, 1, 2).copy())  # (B, 3, S, S)
  k = a.masks_per_image
  masks = [torch.from_numpy(host['masks'][b, :k].astype(np.float32)) for b in range(a.batch)]
  labels = [torch.from_numpy(host['classes'][b, :k].astype(np.int64)) for b in range(a.batch)]

  def train_step():
    model.train()
    out = model(pixel_values=x, mask_labels=masks, class_labels=labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(out.loss)

  def infer():
    model.eval()
    with torch.no_grad():
      return model(pixel_values=x).masks_queries_logits.shape

  counts = {'peer_params_total': sum(p.numel() for p in model.parameters()),
            'peer_params_trainable': sum(p.numel() for p in trainable)}
  return train_step, infer, counts, model


def build_ours(a, host):
  """Our jitted train step and inference forward as closures (state carried inside)."""
  from ovsnet_jax import inference, sharding, train  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.models import clip, ovsnet  # pylint: disable=g-import-not-at-top
  config = train_bench.bench_config(a)
  mesh = sharding.make_mesh()
  rep = sharding.replicated(mesh)
  model = ovsnet.build_model(config)
  init_fn = lambda key: train.create_train_state(ovsnet.init_params(config, key), config)
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  state_sh = sharding.state_shardings(abstract, mesh, False)
  state = {'s': jax.jit(init_fn, out_shardings=state_sh)(jax.random.PRNGKey(0))}
  batch = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in host.items()}
  text = jax.device_put(train_bench.random_text(a.classes, clip.get_variant(a.clip_variant).embed_dim), rep)
  rng = jax.device_put(jax.random.PRNGKey(1), rep)
  t0 = time.perf_counter()
  step = sharding.jit_train_step(train.make_step_fn(model, config), state_sh, mesh).lower(
      state['s'], batch, rng, text).compile()
  compile_train = time.perf_counter() - t0

  def forward(params, images):
    if a.inference_output == 'features':
      out = inference.model_outputs(model, params, images)
      return out['fused_embeds'][-1], out['pred_masks'][-1]
    seen = jnp.arange(a.classes) % 2 == 0
    return inference.semantic_logits(model, params, images, text, seen).argmax(-1)

  t0 = time.perf_counter()
  fwd = jax.jit(forward).lower(state['s'].params, batch['image']).compile()
  compile_infer = time.perf_counter() - t0

  def train_step():
    state['s'], metrics = step(state['s'], batch, rng, text)
    return float(metrics['loss'])  # blocks

  def infer():
    return jax.block_until_ready(fwd(state['s'].params, batch['image'])).shape

  pieces = {'config': config, 'model': model, 'state': state, 'batch': batch}
  return train_step, infer, {'ours_compile_train_s': round(compile_train, 1),
                             'ours_compile_infer_s': round(compile_infer, 1)}, pieces


def time_pieces(a, pieces, peer_model) -> dict:
  """Medians of our trunk forward, our train-mode forward, our criterion; the peer's backbone."""
  import torch  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.benchmarks import criterion as crit_bench  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.models import clip, clip_convnext  # pylint: disable=g-import-not-at-top
  params, batch = pieces['state']['s'].params, pieces['batch']
  visual = clip_convnext.CLIPVisual(a.clip_variant, dtype=jnp.float32)
  trunk = jax.jit(lambda p, x: visual.apply({'params': p}, x))
  model = pieces['model']
  text = jax.tree.map(jnp.asarray, train_bench.random_text(a.classes, clip.get_variant(a.clip_variant).embed_dim))
  fwd = jax.jit(lambda p, x, r: model.apply({'params': p}, x, text, train=True, rngs={'dropout': r})[1])
  ca = crit_bench.parse([f'--size={a.size}', f'--batch={a.batch}', f'--queries={a.queries}',
                         f'--classes={a.classes}', f'--max_masks={a.max_masks}',
                         f'--masks_per_image={a.masks_per_image}', f'--num_points={a.num_points}',
                         f'--layers={a.decoder_layers + 1}'])
  ccfg = crit_bench.train_cfg(ca, pieces['config'].train.sampled_masks_per_image)
  crit = jax.jit(crit_bench.loss_and_grads(ccfg))
  crit_in = jax.device_put(crit_bench.random_inputs(ca))
  x_t = torch.from_numpy(np.asarray(batch['image']).transpose(0, 3, 1, 2).copy())
  backbone = peer_model.model.pixel_level_module.encoder
  runs = {
      'ours_trunk_s': lambda: jax.block_until_ready(trunk(params['clip_visual'], batch['image'])),
      'ours_forward_train_s': lambda: jax.block_until_ready(
          fwd(params, batch['image'], jax.random.PRNGKey(0))),
      'ours_criterion_fwd_bwd_s': lambda: jax.block_until_ready(crit(*crit_in)),
      'peer_backbone_s': lambda: torch.no_grad()(backbone)(x_t),
  }
  figures = {}
  for name, fn in runs.items():
    fn()
    times = []
    for _ in range(a.rounds):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    figures[name] = round(float(np.median(times)), 4)
  return figures


def _log(msg):
  print(f'[peer {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def run(argv) -> dict:
  a = parse(argv)
  host = train_bench.random_batch(a)
  peer_train, peer_infer, peer_counts, peer_model = build_peer(a, host)
  _log('peer built; building and compiling ours')
  ours_train, ours_infer, ours_counts, pieces = build_ours(a, host)
  _log(f'ours compiled: {ours_counts}')
  fns = {'peer_train': peer_train, 'ours_train': ours_train,
         'peer_infer': peer_infer, 'ours_infer': ours_infer}
  for _ in range(a.warmup):
    for name, fn in fns.items():
      fn()
      _log(f'warm-up {name} done')
  times = {name: [] for name in fns}
  for r in range(a.rounds):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
      _log(f'round {r} {name}: {times[name][-1]:.3f} s')
  med = {name: float(np.median(t)) for name, t in times.items()}
  figures = {'mode': 'peer', 'device': jax.devices()[0].device_kind, 'size': a.size,
             'batch': a.batch, 'queries': a.queries, 'clip_variant': a.clip_variant,
             'dtype': 'float32', 'rounds': a.rounds, 'inference_output': a.inference_output,
             **peer_counts, **ours_counts}
  for name, sec in med.items():
    figures[f'{name}_s'] = round(sec, 4)
    figures[f'{name}_all_s'] = [round(t, 4) for t in times[name]]
  # > 1: ours is faster.
  figures['train_speed_ratio_ours_vs_peer'] = round(med['peer_train'] / med['ours_train'], 3)
  figures['infer_speed_ratio_ours_vs_peer'] = round(med['peer_infer'] / med['ours_infer'], 3)
  if a.pieces:
    print(json.dumps(figures, sort_keys=True), file=sys.stderr, flush=True)  # before the pieces
    figures.update(time_pieces(a, pieces, peer_model))
  return figures
