"""CLIP pretraining on captions of CROPS: does it make the CLIP's dense features name their region?

The corpus's 'scene' kind is replaced by crops: a scene rendered at twice the CLIP's image size
(things at the segmenter's pixel scale), a random window of the CLIP's size cut from it, and a
caption naming only what is inside the window (stuff covering >= 15% of it, things with >= half of
their visible pixels inside). Kinds: thing 0.45, stuff 0.15, crop 0.40. Everything else is the
package's recipe (`clip_pretraining.train`, default `Settings` but the kinds). Then the CLIP is
measured as every CLIP report measures it: image-level zero-shot and `dense_zero_shot` (ground-truth
masks through the out-of-vocabulary branch) on the segmenter's 64 px scenes. The same on 128 px scenes
with the things at the same pixel size (res5 4x4: the crops' scale) is `oracle.py OUT_DIR 80 128 4
0.0714,0.143`.

  PYTHONPATH=$PWD JAX_PLATFORMS=cpu python docs/diagnostics/issue14/crops.py OUT_DIR [STEPS=1000]
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.getcwd())
from ovsnet_jax import clip_pretraining as cp  # pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax.convert import open_clip as convert  # pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax.input import shapes  # pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax.input import shapes_corpus as sc  # pylint: disable=g-import-not-at-top,wrong-import-position

KINDS = (('thing', 0.45), ('stuff', 0.15), ('crop', 0.40))
CROP_TEMPLATES = ('{things} on {s}.', 'a photo of {things} on {s}.', 'There is {things} on {s}.',
                  'a photo of {s} with {things}.')


def crop_example(rng: np.random.Generator, size: int, patterned: bool) -> dict:
  big = 2 * size
  stuff = [str(s) for s in rng.choice(sc.STUFF_NAMES, 1 + int(rng.uniform() < 0.5), replace=False)]
  things = [str(t) for t in rng.choice(sc.THING_NAMES, int(rng.integers(2, 7)))]
  radius = (shapes.THING_RADIUS[0] / 2, shapes.THING_RADIUS[1] / 2)  # same pixel size as at 64 px
  image, ids, segs = shapes.render_scene(rng, big, stuff, things, radius=radius, patterned=patterned)
  y, x = (int(v) for v in rng.integers(0, big - size + 1, 2))
  win = ids[y:y + size, x:x + size]
  named_stuff, named_things = [], []
  for seg_id, name in segs:
    inside, total = int((win == seg_id).sum()), int((ids == seg_id).sum())
    if name in sc.STUFF_NAMES and inside >= 0.15 * size * size:
      named_stuff.append(name)
    elif name in sc.THING_NAMES and inside >= 0.5 * total and inside >= 20:
      named_things.append(name)
  if not named_stuff:  # the largest stuff region in the window
    stuff_ids = [(int((win == i).sum()), n) for i, n in segs if n in sc.STUFF_NAMES]
    named_stuff = [max(stuff_ids)[1]]
  stuff_text = sc._join([sc._name(rng, s) for s in dict.fromkeys(named_stuff)])  # pylint: disable=protected-access
  if named_things:
    names = sc._join([f'a {sc._name(rng, t)}' for t in dict.fromkeys(named_things)])  # pylint: disable=protected-access
    caption = CROP_TEMPLATES[int(rng.integers(len(CROP_TEMPLATES)))].format(things=names, s=stuff_text)
  else:
    caption = sc.STUFF_TEMPLATES[int(rng.integers(len(sc.STUFF_TEMPLATES)))].format(s=stuff_text)
  return {'image': image[y:y + size, x:x + size], 'caption': caption, 'kind': 'crop',
          'things': named_things, 'stuff': named_stuff}


def getitem(self, index: int) -> dict:
  rng = np.random.default_rng([self.seed, sc.SPLITS[self.split], index, 77])
  kinds, probs = zip(*KINDS)
  kind = kinds[int(rng.choice(len(kinds), p=probs))]
  if kind == 'thing':
    return self.example(rng, 'thing', [str(rng.choice(sc.THING_NAMES))], [str(rng.choice(sc.STUFF_NAMES))])
  if kind == 'stuff':
    return self.example(rng, 'stuff', [], [str(rng.choice(sc.STUFF_NAMES))])
  return crop_example(rng, self.image_size, self.patterned)


def main():
  out = sys.argv[1]
  steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
  sc.ShapesCaptions.__getitem__ = getitem
  s = cp.Settings(steps=steps)
  ds = sc.ShapesCaptions('train', 6, s.image_size, s.world_seed, s.patterned)
  for i in range(6):
    print('example caption:', ds[i]['kind'], repr(ds[i]['caption']), flush=True)
  if not os.path.isfile(os.path.join(out, convert.CONFIG_NAME)):
    t0 = time.perf_counter()
    params = cp.train(s, log=lambda m: print(m, flush=True), log_every=100)
    print('train s', round(time.perf_counter() - t0), flush=True)
    convert.write_checkpoint_dir(params, {'variant': s.variant, 'source': 'issue14/crops.py',
                                          'sha256': cp.params_sha256(params)}, out)
  variant, params = convert.load_clip_checkpoint(out)
  text = cp.class_text(variant, params)
  zs = cp.zero_shot(variant, params, s.image_size, 20, s.world_seed + 1, s.patterned, text)
  print('zero-shot', {k: zs[k] for k in ('acc_seen', 'acc_unseen')}, zs['per_class'], flush=True)
  dense = cp.dense_zero_shot(variant, params, s.image_size, 80, s.world_seed + 1, s.patterned, text=text)
  print(cp.dense_summary(dense), dense['IoU'], flush=True)


if __name__ == '__main__':
  main()
