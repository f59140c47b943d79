"""Ceiling of two-stage (crop, then classify) zero-shot on ground-truth segments.

Each GT segment of a held-out scene is cut out as its bounding box (made square, 10% margin), resized to
the CLIP's input size, and classified by the CLIP's GLOBAL image embedding among all 13 classes, either
as is ('box') or with the pixels outside the mask set to the CLIP's pixel mean ('masked', as the
two-stage open-vocabulary segmenters classify mask proposals). The segment is painted with the class
and the map scored like `clip_pretraining.dense_zero_shot`. This bounds what a distillation of crop
embeddings into the dense res5 features (CLIPSelf-style) could give FC-CLIP's out-of-vocabulary branch.

  PYTHONPATH=$PWD JAX_PLATFORMS=cpu python docs/diagnostics/issue14/cropceiling.py CLIP_DIR [N_IMAGES=80]
"""
import sys
import numpy as np, jax, jax.numpy as jnp
from ovsnet_jax import clip_pretraining as cp, metrics
from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.models import clip
from ovsnet_jax.input import shapes

ckpt = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 80
variant, params = convert.load_clip_checkpoint(ckpt)
names = shapes.class_names('val'); K = len(names); short = [x[0] for x in names]
seen = np.asarray(shapes.seen_mask('val'))
text = cp.class_text(variant, params)
E, V = np.asarray(text['embeds']), np.asarray(text['valid'])
model = clip.CLIP(variant)
encode = jax.jit(lambda x: model.apply({'params': params}, cp.normalize(x), method=clip.CLIP.encode_image))
size = 64
mean = np.asarray(cp.PIXEL_MEAN, np.float32)
ds = shapes.ShapesPanoptic('val', n, size, 0, 4, True)


def crop(img, mk, masked):
  ys, xs = np.nonzero(mk)
  cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
  half = max(ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()) * 0.55
  src = np.where(mk[..., None], img, mean) if masked else img
  g = (np.arange(size) + 0.5) / size * 2 * half - half  # nearest-neighbour resample of the square box
  yy = np.clip(np.round(cy + g - 0.5).astype(int), 0, img.shape[0] - 1)
  xx = np.clip(np.round(cx + g - 0.5).astype(int), 0, img.shape[1] - 1)
  return src[yy][:, xx]


for masked in (False, True):
  conf = np.zeros((K, K), np.int64)
  for i in range(n):
    ex = ds[i]; img = ex['image'].astype(np.float32)
    mks = [ex['segment_ids'] == s['id'] for s in ex['segments']]
    f = np.asarray(encode(jnp.asarray(np.stack([crop(img, m, masked) for m in mks]))))
    f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    s = np.where(V[None], np.einsum('nd,ksd->nks', f, E), -np.inf).max(-1)  # (M, K)
    for j, seg in enumerate(ex['segments']):
      conf[seg['category'], int(s[j].argmax())] += int(mks[j].sum())
  res = metrics.segmentation_metrics(conf, short, seen)
  print('masked' if masked else 'box', {k: round(float(res[k]), 2) for k in ('mIoU', 'mIoU-seen', 'mIoU-unseen', 'hIoU', 'pACC')},
        'chance', {k: round(float(v), 2) for k, v in metrics.chance_metrics(conf, seen).items()})
  print('  IoU', {k: round(float(v), 1) for k, v in res['IoU'].items()})
