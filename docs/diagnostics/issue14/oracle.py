"""Oracle for the out-of-vocabulary branch: ground-truth masks, the frozen CLIP's mask-pooled res5
feature (its head applied, as FC-CLIP's OOV branch does), classified among ALL 13 val classes; each GT
segment painted with that class; mIoU / seen / unseen against the ground truth and against chance.

  PYTHONPATH=$PWD JAX_PLATFORMS=cpu [SHIFT=1] python docs/diagnostics/issue14/oracle.py CLIP_DIR \
      [N_IMAGES=100] [IMAGE_SIZE=64] [MAX_THINGS=4] [RADIUS=0.143,0.286 (fractions of the side)]

SHIFT=1: res5 at stride 16 (four passes of the image rolled by 0 / 16 px, interleaved).
`clip_pretraining.dense_zero_shot` is this measurement in the package (default world only).
"""
import sys
import numpy as np, jax, jax.numpy as jnp
from ovsnet_jax import clip_pretraining as cp, metrics
from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.models import clip_convnext
from ovsnet_jax.input import shapes
from ovsnet_jax.text import classifier

ckpt = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
size = int(sys.argv[3]) if len(sys.argv) > 3 else 64
max_shapes = int(sys.argv[4]) if len(sys.argv) > 4 else 4
radius = tuple(float(x) for x in sys.argv[5].split(',')) if len(sys.argv) > 5 else (1 / 7, 1 / 3.5)
variant, params = convert.load_clip_checkpoint(ckpt)
names = shapes.class_names('val'); K = len(names); short = [x[0] for x in names]
seen = np.asarray(shapes.seen_mask('val'))
text = classifier.TextClassifier.from_params(variant, params['text'])(names)
E, V = text['embeds'], text['valid']  # (K, S, D), (K, S)
vis = clip_convnext.CLIPVisual(variant); vp = {'params': params['visual']}
_feats = jax.jit(lambda x: vis.apply(vp, cp.normalize(x))['res5'])
import os
SHIFT = int(os.environ.get('SHIFT', '0'))  # >0: res5 at stride 32/2: the image rolled by 16 px, interleaved
def feats_fn(x):
  if not SHIFT:
    return _feats(x)
  x = np.asarray(x); b, hh, ww, _ = x.shape; out = None
  for dy in (0, 16):
    for dx in (0, 16):
      f = np.asarray(_feats(np.roll(x, (-dy, -dx), axis=(1, 2))))
      if out is None:
        out = np.zeros((b, 2 * f.shape[1], 2 * f.shape[2], f.shape[3]), f.dtype)
      out[:, dy // 16::2, dx // 16::2] = f
  return out
head_fn = jax.jit(lambda p: vis.apply(vp, p, method=clip_convnext.CLIPVisual.head))
ds = shapes.ShapesPanoptic('val', n, size, 0, max_shapes, radius=radius)
conf = np.zeros((K, K), np.int64); conf_gt_only = np.zeros((K, K), np.int64)
hits = np.zeros(K); tot = np.zeros(K); rhits = np.zeros(K)
is_thing = np.arange(K) < len(shapes.THINGS)
for i in range(n):
  ex = ds[i]
  f = np.asarray(feats_fn(ex['image'][None].astype(np.float32)))[0]  # (h, w, C)
  h, w = f.shape[:2]
  pred = np.full(ex['segment_ids'].shape, -1); gt = np.full(ex['segment_ids'].shape, -1)
  for seg in ex['segments']:
    mk = (ex['segment_ids'] == seg['id'])
    mm = mk.reshape(h, size // h, w, size // w).mean((1, 3))
    mm = (mm > 0.5) if (mm > 0.5).any() else (mm == mm.max())  # binarised like mask pooling's logit > 0
    pooled = (f * mm[..., None]).sum((0, 1)) / mm.sum()
    e = np.asarray(head_fn(jnp.asarray(pooled))); e = e / np.linalg.norm(e)
    s = np.where(V, np.einsum('d,ksd->ks', e, E), -np.inf).max(-1)
    rs = np.where(is_thing == is_thing[seg['category']], s, -np.inf); rhits[seg['category']] += int(rs.argmax()) == seg['category']
    c = int(s.argmax()); pred[mk] = c; gt[mk] = seg['category']
    hits[seg['category']] += c == seg['category']; tot[seg['category']] += 1
  v = gt >= 0
  np.add.at(conf, (gt[v], pred[v]), 1)
res = metrics.segmentation_metrics(conf, short, seen)
ch = metrics.chance_metrics(conf, seen)
print('oracle (GT masks, CLIP res5 pooled, 13-way):', {k: round(float(res[k]), 2) for k in res if isinstance(res[k], (float, np.floating))})
print('chance:', {k: round(float(v), 2) for k, v in ch.items()})
print('per-class segment acc %:', dict(zip(short, np.round(100 * hits / np.maximum(tot, 1)))))
print('per-class segment acc %, things among things / stuff among stuff:', dict(zip(short, np.round(100 * rhits / np.maximum(tot, 1)))))
print('per-class IoU:', {k: round(float(v), 1) for k, v in res['IoU'].items()})
np.set_printoptions(linewidth=200)
print('pixel confusion (rows gt, cols pred, % of row):', short)
print(np.round(100 * conf / np.maximum(conf.sum(1, keepdims=True), 1)).astype(int))
