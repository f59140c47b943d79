r"""Smoke run: a tiny OVSNet trained on the procedural shapes dataset, on CPU, in minutes.

  python launch/train.py --config=configs/smoke.py --workdir=/tmp/ovsnet_smoke

CLIP is the `test_tiny` variant with random weights (no download), the model is narrow and the
images are 64x64. Training sees only the SEEN shapes classes; the evaluation at the end runs on
the held-out `val` split with its full vocabulary (7 seen + 4 unseen classes) and prints mIoU;
chance level is about 100 / 11 classes = 9%. A random CLIP gives the unseen classes nothing to go
on, so mIoU-seen is the figure that shows learning. Variants: `configs/smoke.py:tiny` (a few steps, for tests).
"""
import ml_collections

from configs import common


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  c = common.get_base_config()
  c.seed = 0
  m = c.model = common.get_model_config('test_tiny')
  m.compute_dtype = 'float32'
  m.pixel_decoder.conv_dim = m.pixel_decoder.mask_dim = 32
  m.pixel_decoder.num_layers, m.pixel_decoder.num_heads = 1, 4
  m.pixel_decoder.ffn_dim, m.pixel_decoder.num_groups = 64, 8
  m.decoder.num_queries, m.decoder.hidden_dim, m.decoder.num_heads = 16, 32, 4
  m.decoder.ffn_dim, m.decoder.num_layers = 64, 3
  # A random-init CLIP has no semantics: F_C^inf (a mix of CLIP features, Z F_Q stays in their
  # span) cannot learn the classes, and the out-of-vocabulary CLIP logits are noise. Classify
  # F_Q^inf (GFA still runs) and evaluate the in-vocabulary logits only. With a converted CLIP
  # (--config.clip_checkpoint) use the paper's settings (fused_clip, ensemble on).
  m.gfa.classify = 'fused_query'
  m.ensemble.enabled = False

  c.data.train = 'shapes'
  c.data.shapes = ml_collections.ConfigDict(dict(num_images=2000, image_size=64, seed=0, max_shapes=4))
  c.data.crop_size = 64
  c.data.scale_range = (0.8, 1.25)
  c.data.max_masks = 8
  c.data.num_workers = 0
  c.data.eval_min_size = c.data.eval_max_size = 64

  t = c.train
  t.batch_size, t.num_steps, t.warmup_steps = 8, 600, 10
  t.lr, t.grad_clip = 1e-3, 0.1  # a from-scratch tiny model learns faster than the fine-tuning recipe
  t.num_points = 1024
  t.log_every, t.checkpoint_every, t.eval_every, t.keep_checkpoints = 50, 200, 600, 2

  c.eval.dataset = 'shapes'
  c.eval.max_images = 200
  c.eval.batch_size = 8

  if arg == 'tiny':  # a few steps of a smaller model: the tests' variant (fast to compile)
    t.num_steps, t.warmup_steps, t.log_every, t.checkpoint_every, t.eval_every = 6, 2, 2, 2, 6
    t.num_points = 256
    m.decoder.num_layers = 2
    m.gfa.log_singular = False  # no host callback in the step: its executable can be cached on disk
    c.eval.max_images = 16
  elif arg:
    raise ValueError(f"configs/smoke.py: unknown variant {arg!r}, expected '' or 'tiny'")
  return c
