"""Can an image tower learn the 8 thing classes of the shapes world at all, supervised, in a few hundred steps?

Separates "the CLIP recipe is wrong" from "this tower does not learn this world quickly": the same
single-thing images as the CLIP corpus ('thing' kind), the same on-device augmentation
(`clip_pretraining.augment`), a linear classifier on the L2-normalised image embedding, AdamW with
warmup + cosine, batch 128. Held-out accuracy on `shapes_corpus.zero_shot_set` (20 per class; chance 12.5%).

  PYTHONPATH=$PWD JAX_PLATFORMS=cpu python docs/diagnostics/issue14/trainability.py \
      --model=convnext --steps=300 --lr=2e-3 --ls=0.1 [--fills] [--noaug]

--model=convnext: the `test_tiny` ConvNeXt-CLIP image tower (embed_image); --model=plain: four 3x3 convs
(stride 2, ReLU, widths 32-64-64-128), global average pool, Dense 32. --fills: every thing class also gets
its own two-colour surface pattern (circle solid, square checker, triangle horizontal stripes, star dots,
cross diagonal, hexagon vertical, ring anti-diagonal, diamond grid; random colours, random phase).
--noaug: no flips / channel permutation / inversion.
"""
import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ovsnet_jax import clip_pretraining as cp
from ovsnet_jax.input import shapes
from ovsnet_jax.input import shapes_corpus as sc
from ovsnet_jax.models import clip

FILLS = {'circle': 'solid', 'square': 'checker', 'triangle': 'hstripes', 'star': 'dots', 'cross': 'diagonal',
         'hexagon': 'vstripes', 'ring': 'antidiagonal', 'diamond': 'grid'}


def fill_mix(pattern: str, rng: np.random.Generator, size: int) -> np.ndarray:
  """(size, size) in [0, 1]: where a thing's second colour shows, for its class's surface pattern."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
  p = rng.uniform(3.5, 5)
  oy, ox = rng.uniform(0, p, 2)
  y, x = (yy + oy) % p < p / 2, (xx + ox) % p < p / 2
  mixes = {
      'solid': np.zeros((size, size), bool), 'checker': y ^ x, 'hstripes': y, 'vstripes': x,
      'dots': ((yy + oy) % p < p / 2.5) & ((xx + ox) % p < p / 2.5),
      'diagonal': (yy + xx + oy) % (1.4 * p) < 0.7 * p,
      'antidiagonal': (yy - xx + 1000 + oy) % (1.4 * p) < 0.7 * p,
      'grid': ((yy + oy) % p < 1.2) | ((xx + ox) % p < 1.2)}
  return mixes[pattern].astype(np.float64)


def render_with_fills(rng, size, stuff, things, split_row=None, radius=(1 / 7, 1 / 3.5), patterned=True):
  """`shapes.render_scene` with this probe's class-specific two-colour pattern inside every thing.

  Kept to reproduce the recorded figures; `patterned` is ignored. The package's own patterned world
  (`shapes.THING_PATTERNS`) replaced these fills, whose 'diagonal' and 'antidiagonal' are mirror images.
  """
  del patterned
  image, ids, segments = np.zeros((size, size, 3)), np.zeros((size, size), np.int32), []
  rows = [(0, size)]
  if len(stuff) == 2:
    split_row = int(rng.integers(size // 4, 3 * size // 4)) if split_row is None else split_row
    rows = [(0, split_row), (split_row, size)]
  for seg_id, ((top, bottom), name) in enumerate(zip(rows, stuff), start=1):
    image[top:bottom] = shapes.stuff_texture(name, rng, bottom - top, size, size / 64)
    ids[top:bottom] = seg_id
    segments.append((seg_id, name))
  for k, name in enumerate(things):
    r = rng.uniform(radius[0] * size, radius[1] * size)
    mask = shapes.shape_mask(name, size, rng.uniform(r, size - r), rng.uniform(r, size - r), r)
    c1 = shapes._thing_colour(rng, image[mask].mean(0) if mask.any() else image.mean((0, 1)))  # pylint: disable=protected-access
    c2 = shapes._thing_colour(rng, c1)  # pylint: disable=protected-access
    mix = fill_mix(FILLS[name], rng, size)[..., None]
    image[mask] = (c1 * (1 - mix) + c2 * mix + rng.normal(0, 4, (size, size, 3)))[mask]
    ids[mask] = len(rows) + 1 + k
    segments.append((len(rows) + 1 + k, name))
  present = set(np.unique(ids).tolist())
  return np.clip(image, 0, 255).astype(np.uint8), ids, [s for s in segments if s[0] in present]


class Plain(nn.Module):
  @nn.compact
  def __call__(self, x):  # (B, H, W, 3) -> (B, 32)
    for width in (32, 64, 64, 128):
      x = nn.relu(nn.Conv(width, (3, 3), strides=2)(x))
    return nn.Dense(32)(x.mean((1, 2)))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--model', choices=('convnext', 'plain'), default='convnext')
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--lr', type=float, default=2e-3)
  parser.add_argument('--ls', type=float, default=0.1, help='ConvNeXt layer-scale init')
  parser.add_argument('--fills', action='store_true')
  parser.add_argument('--noaug', action='store_true')
  parser.add_argument('--eval_every', type=int, default=50)
  args = parser.parse_args()
  if args.fills:
    shapes.render_scene = render_with_fills  # shapes_corpus looks it up at call time
  corpus = sc.ShapesCaptions('train', 1, 64, 0)
  images, labels = [], []
  for i in range(4000):
    rng = np.random.default_rng([0, 99, i])
    t = int(rng.integers(len(sc.THING_NAMES)))
    images.append(corpus.example(rng, 'thing', [sc.THING_NAMES[t]], [str(rng.choice(sc.STUFF_NAMES))])['image'])
    labels.append(t)
  images, labels = np.stack(images), np.asarray(labels)
  test_images, test_labels = sc.zero_shot_set(20, 64, 1)
  keep = test_labels < len(sc.THING_NAMES)
  test_images, test_labels = test_images[keep], test_labels[keep]

  if args.model == 'plain':
    net = Plain()
    tower = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))['params']
    encode = lambda p, x: net.apply({'params': p}, cp.normalize(x))
  else:
    model = clip.CLIP('test_tiny')
    tower = cp.with_layer_scale(clip.init_params('test_tiny', jax.random.PRNGKey(0), 64), args.ls)
    encode = lambda p, x: model.apply({'params': p}, cp.normalize(x), method=clip.CLIP.encode_image)
  params = {'tower': tower, 'head': 0.1 * jax.random.normal(jax.random.PRNGKey(1), (32, len(sc.THING_NAMES)))}
  augment = (lambda x, key: x.astype(jnp.float32)) if args.noaug else cp.augment

  def loss_fn(p, x, y, key):
    f = encode(p['tower'], augment(x, key))
    f = f / jnp.linalg.norm(f, axis=-1, keepdims=True)  # (B, 32)
    return optax.softmax_cross_entropy_with_integer_labels(10 * f @ p['head'], y).mean()

  warmup = min(30, args.steps // 2)
  schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, args.steps, args.lr * 0.05)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b2=0.98, weight_decay=0.05))
  opt_state = tx.init(params)

  @jax.jit
  def step(p, s, x, y, key):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y, key)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  order, t0 = np.random.default_rng(0), time.perf_counter()
  for i in range(args.steps):
    idx = order.choice(len(images), 128, replace=False)
    params, opt_state, loss = step(params, opt_state, images[idx], labels[idx], jax.random.PRNGKey(i))
    if (i + 1) % args.eval_every == 0 or i + 1 == args.steps:
      f = np.array(encode(params['tower'], test_images))
      f /= np.linalg.norm(f, axis=-1, keepdims=True)
      acc = float(np.mean(np.argmax(f @ np.asarray(params['head']), -1) == test_labels))
      print(f'step {i + 1}: train loss {float(loss):.3f} (ln 8 = 2.079), held-out accuracy {100 * acc:.0f}% '
            f'({time.perf_counter() - t0:.0f} s)', flush=True)


if __name__ == '__main__':
  main()
