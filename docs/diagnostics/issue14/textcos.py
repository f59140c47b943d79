"""Cosines between the 13 class embeddings of a CLIP directory (TextClassifier: templates, synonyms).

  PYTHONPATH=$PWD JAX_PLATFORMS=cpu python docs/diagnostics/issue14/textcos.py <clip dir>
"""
import sys, numpy as np
from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.text import classifier
from ovsnet_jax.input import shapes
np.set_printoptions(linewidth=200, precision=2, suppress=True)
variant, params = convert.load_clip_checkpoint(sys.argv[1])
names = shapes.class_names('val')
t = classifier.TextClassifier.from_params(variant, params['text'])(names)
e = np.asarray(t['embeds']); v = np.asarray(t['valid'])
m = (e * v[..., None]).sum(1) / v.sum(1, keepdims=True)
m /= np.linalg.norm(m, axis=-1, keepdims=True)
c = m @ m.T
print([n[0] for n in names]); print(c)
off = c[~np.eye(len(c), dtype=bool)]
print('off-diag mean %.3f max %.3f' % (off.mean(), off.max()))
print('logit scale exp', float(np.exp(params['logit_scale'])))
