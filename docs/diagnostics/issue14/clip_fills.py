"""CLIP pretraining (the package's recipe, `clip_pretraining.train`) on a chosen world, longer.

  PYTHONPATH=$PWD JAX_PLATFORMS=cpu python docs/diagnostics/issue14/clip_fills.py STEPS BATCH LR
WORLD=probe (default: the session-3 figures, trainability.render_with_fills), WORLD=patterned (the
package's `shapes.THING_PATTERNS`), WORLD=plain (shapes alone).
Prints the contrastive loss every 250 steps and the zero-shot report (held-out images, per class).
"""
import sys, os, time
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
from ovsnet_jax import clip_pretraining as cp
from ovsnet_jax.input import shapes
import trainability
world = os.environ.get('WORLD', 'probe')
if world == 'probe':
  shapes.render_scene = trainability.render_with_fills
steps = int(sys.argv[1]); bs = int(sys.argv[2]); lr = float(sys.argv[3])
s = cp.Settings(steps=steps, batch_size=bs, lr=lr, warmup_steps=50, patterned=world != 'plain')
t0 = time.time()
params = cp.train(s, log=lambda m: print(m, flush=True), log_every=250)
print('train s', round(time.time() - t0), flush=True)
print(cp.zero_shot(s.variant, params, s.image_size, 20, s.world_seed + 1, s.patterned), flush=True)
