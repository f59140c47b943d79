"""Which part of the ConvNeXt slows learning in the shapes world? Supervised 8-shape classification as
trainability.py (same images, augmentation, head, optimiser), over a ladder of architectures between a
plain CNN (learns) and the ConvNeXt tower (does not, in 200 steps).

  PYTHONPATH=$PWD JAX_PLATFORMS=cpu python docs/diagnostics/issue14/arch_probe.py ARCH STEPS LR [fills]

ARCH: plain | cnx_tiny | cnx_tiny_convstem | cnx_wide | cnx_wide_convstem | cnx_2222_convstem.
Environment switches (one experiment each, see the README table): B (batch, 128), LS (layer scale, 1.0),
NORM=ln|ln_slow|none, DW=auto|conv|skip (depthwise conv), ACT=relu|gelu, PSTEM=1 (plain: 4x4/4 stem),
DS2=1 (plain: 2x2/2 downsampling), HEADLN=1 (plain: LayerNorm + bias-free projection head),
FILLP=lo,hi (fill pattern period in px), SIZE (image size, 64), EVERY (eval interval, 50).
"""
import sys, time, os
sys.path.insert(0, os.getcwd())
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np, optax
from ovsnet_jax import clip_pretraining as cp
from ovsnet_jax.input import shapes, shapes_corpus as sc
from ovsnet_jax.models import clip_convnext as cc
arch, steps, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
if len(sys.argv) > 4 and sys.argv[4] == 'fills':
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); import trainability
  shapes.render_scene = trainability.render_with_fills
  if os.environ.get('FILLP'):
    lo, hi = map(float, os.environ['FILLP'].split(','))
    import inspect
    src = inspect.getsource(trainability.fill_mix).replace('rng.uniform(3.5, 5)', f'rng.uniform({lo}, {hi})')
    exec(src, trainability.__dict__)
NORM = os.environ.get('NORM', 'ln')
def LN():
  if NORM == 'none': return lambda x: x
  return nn.LayerNorm(epsilon=1e-6, use_fast_variance=(NORM != 'ln_slow'))
B = int(os.environ.get('B', 128)); LS = float(os.environ.get('LS', 1.0))

class Plain(nn.Module):
  @nn.compact
  def __call__(self, x):
    act = nn.relu if os.environ.get('ACT', 'relu') == 'relu' else (lambda v: nn.gelu(v, approximate=False))
    for i, w in enumerate((32, 64, 64, 128)):
      if i == 0 and os.environ.get('PSTEM'):
        x = act(nn.Conv(w, (4, 4), strides=4, padding='VALID')(x)); continue
      if os.environ.get('DS2'):
        x = act(nn.Conv(w, (2, 2), strides=2, padding='VALID')(x))
      else:
        x = act(nn.Conv(w, (3, 3), strides=2)(x))
    if os.environ.get('HEADLN'):
      return nn.Dense(32, use_bias=False)(nn.LayerNorm(epsilon=1e-6)(x.mean((1, 2))))
    return nn.Dense(32)(x.mean((1, 2)))

class Block(nn.Module):  # ConvNeXt block, configurable
  c: int
  @nn.compact
  def __call__(self, x):
    y = cc.DepthwiseConv(self.c, 7, os.environ.get('DW', 'auto'))(x) if os.environ.get('DW') != 'skip' else x
    y = LN()(y)
    y = nn.Dense(4 * self.c)(y); y = nn.gelu(y, approximate=False); y = nn.Dense(self.c)(y)
    g = self.param('gamma', nn.initializers.constant(LS), (self.c,))
    return x + g * y

class CNX(nn.Module):
  widths: tuple
  depths: tuple
  stem: str
  @nn.compact
  def __call__(self, x):
    if self.stem == 'patch':
      x = nn.Conv(self.widths[0], (4, 4), strides=4, padding='VALID')(x)
    elif self.stem == 'conv':  # two 3x3/s2 convs
      x = nn.gelu(nn.Conv(self.widths[0] // 2, (3, 3), strides=2)(x), approximate=False)
      x = nn.Conv(self.widths[0], (3, 3), strides=2)(x)
    x = LN()(x)
    for i, (w, d) in enumerate(zip(self.widths, self.depths)):
      if i:
        x = LN()(x); x = nn.Conv(w, (2, 2), strides=2, padding='VALID')(x)
      for _ in range(d):
        x = Block(w)(x)
    x = LN()(x.mean((1, 2)))
    return nn.Dense(32, use_bias=False)(x)

ARCHS = {
  'plain': Plain(),
  'cnx_tiny': CNX((16, 32, 64, 128), (1, 1, 2, 1), 'patch'),
  'cnx_tiny_convstem': CNX((16, 32, 64, 128), (1, 1, 2, 1), 'conv'),
  'cnx_wide_convstem': CNX((32, 64, 128, 256), (1, 1, 2, 1), 'conv'),
  'cnx_wide': CNX((32, 64, 128, 256), (1, 1, 2, 1), 'patch'),
  'cnx_2222_convstem': CNX((32, 64, 128, 256), (2, 2, 2, 2), 'conv'),
}
net = ARCHS[arch]
S = int(os.environ.get('SIZE', 64))
ds = sc.ShapesCaptions('train', 1, S, 0)
imgs, labs = [], []
for i in range(4000):
  rng = np.random.default_rng([0, 99, i]); t = int(rng.integers(8))
  imgs.append(ds.example(rng, 'thing', [sc.THING_NAMES[t]], [str(rng.choice(sc.STUFF_NAMES))])['image']); labs.append(t)
imgs, labs = np.stack(imgs), np.asarray(labs)
timgs, tlabs = sc.zero_shot_set(20, S, 1); keep = tlabs < 8; timgs, tlabs = timgs[keep], tlabs[keep]
p = net.init(jax.random.PRNGKey(0), jnp.zeros((1, S, S, 3)))['params']
params = {'img': p, 'head': 0.1 * jax.random.normal(jax.random.PRNGKey(1), (32, 8))}
enc = lambda pp, x: net.apply({'params': pp}, cp.normalize(x))
def loss_fn(params, x, y, key):
  f = enc(params['img'], cp.augment(x, key)); f = f / jnp.linalg.norm(f, axis=-1, keepdims=True)
  return optax.softmax_cross_entropy_with_integer_labels(10 * f @ params['head'], y).mean()
tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(optax.warmup_cosine_decay_schedule(0, lr, 30, steps, lr * 0.05), b2=0.98, weight_decay=0.05))
st = tx.init(params)
@jax.jit
def step(params, st, x, y, key):
  l, g = jax.value_and_grad(loss_fn)(params, x, y, key); u, st = tx.update(g, st, params)
  return optax.apply_updates(params, u), st, l
t0 = time.time(); r = np.random.default_rng(0)
for i in range(steps):
  idx = r.choice(4000, B, replace=False)
  params, st, l = step(params, st, imgs[idx], labs[idx], jax.random.PRNGKey(i))
  if (i + 1) % int(os.environ.get('EVERY', 50)) == 0:
    f = np.array(jax.jit(enc)(params['img'], timgs)); f /= np.linalg.norm(f, axis=-1, keepdims=True)
    acc = (np.argmax(f @ np.asarray(params['head']), -1) == tlabs).mean()
    print(arch, i + 1, f'loss {float(l):.3f} heldout {acc:.2f} {time.time() - t0:.0f}s', flush=True)
