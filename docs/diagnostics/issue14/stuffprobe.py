"""Does the CLIP still know a stuff class when things stand on it? Global image embedding of a stuff
region with 0, 1, 2 or 4 things on it (20 images each), classified among the stuff classes and among
all 13 classes.

  PYTHONPATH=$PWD JAX_PLATFORMS=cpu python docs/diagnostics/issue14/stuffprobe.py CLIP_DIR
"""
import sys, numpy as np, jax, jax.numpy as jnp
from ovsnet_jax import clip_pretraining as cp
from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.models import clip
from ovsnet_jax.input import shapes, shapes_corpus as sc
from ovsnet_jax.text import classifier
variant, params = convert.load_clip_checkpoint(sys.argv[1])
names = shapes.class_names('val'); K=len(names); short=[x[0] for x in names]
text = classifier.TextClassifier.from_params(variant, params['text'])(names)
E, V = text['embeds'], text['valid']
model = clip.CLIP(variant)
enc = jax.jit(lambda x: model.apply({'params': params}, cp.normalize(x), method=clip.CLIP.encode_image))
T = len(shapes.THINGS)
for nthings in (0, 1, 2, 4):
  accs = {}
  for k, (name, _, _) in enumerate(shapes.STUFF):
    imgs = []
    for i in range(20):
      rng = np.random.default_rng([7, k, i, nthings])
      things = [str(t) for t in rng.choice(sc.THING_NAMES, nthings)]
      img, _, _ = shapes.render_scene(rng, 64, [name], things)
      imgs.append(img)
    f = np.array(enc(np.stack(imgs).astype(np.float32))); f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    s = np.where(V[None], np.einsum('nd,ksd->nks', f, E), -np.inf).max(-1)
    p_stuff = s[:, T:].argmax(-1) + T; p_all = s.argmax(-1)
    accs[name] = (int(100*np.mean(p_stuff == T + k)), int(100*np.mean(p_all == T + k)), np.bincount(p_all, minlength=K).tolist())
  print(nthings, 'things on the stuff: acc among stuff / 13-way / 13-way histogram', accs)
