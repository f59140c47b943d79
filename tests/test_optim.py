"""Optimizer groups, schedule values and AdamW updates, checked against hand computation."""
import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest

from configs import common
from ovsnet_jax import optim


def _train_cfg(**kw):
  cfg = common.get_base_config().train
  cfg.num_steps, cfg.warmup_steps = 100, 10
  cfg.update(kw)
  return cfg


def _params():
  """A param tree laid out like OVSNet's (docs/CONTRACTS.md), with a CLIP-only shape (5, 7, 3, 11)."""
  f = lambda *s: jnp.ones(s, jnp.float32)
  return {
      'clip_visual': {'stem': {'kernel': f(5, 7, 3, 11), 'bias': f(11)}},
      'clip_logit_scale': f(),
      'mask_decoder': {
          'query_feat': {'embedding': f(4, 6)},
          'query_embed': {'embedding': f(4, 6)},
          'level_embed': {'embedding': f(3, 6)},
          'layer_0': {'Dense_0': {'kernel': f(6, 6), 'bias': f(6)}, 'LayerNorm_0': {'scale': f(6), 'bias': f(6)}},
      },
      'pixel_decoder': {'GroupNorm_0': {'scale': f(6), 'bias': f(6)}, 'Conv_0': {'kernel': f(1, 1, 6, 6)}},
      'void_embedding': f(1, 8),
      'logit_scale': f(),
  }


def test_param_labels_by_path_and_shape():
  labels = optim.param_labels(_params())
  flat = {optim.path_to_str(p): l for p, l in jax.tree_util.tree_leaves_with_path(labels)}
  assert flat == {
      'clip_visual/stem/kernel': 'frozen', 'clip_visual/stem/bias': 'frozen', 'clip_logit_scale': 'frozen',
      'mask_decoder/query_feat/embedding': 'no_decay', 'mask_decoder/query_embed/embedding': 'no_decay',
      'mask_decoder/level_embed/embedding': 'no_decay',
      'mask_decoder/layer_0/Dense_0/kernel': 'decay', 'mask_decoder/layer_0/Dense_0/bias': 'no_decay',
      'mask_decoder/layer_0/LayerNorm_0/scale': 'no_decay', 'mask_decoder/layer_0/LayerNorm_0/bias': 'no_decay',
      'pixel_decoder/GroupNorm_0/scale': 'no_decay', 'pixel_decoder/GroupNorm_0/bias': 'no_decay',
      'pixel_decoder/Conv_0/kernel': 'decay', 'void_embedding': 'no_decay', 'logit_scale': 'no_decay'}


@pytest.mark.parametrize('step,expected', [
    (0, 1e-4 * 0.001),  # warmup starts at warmup_factor * lr
    (5, 1e-4 * (0.001 * 0.5 + 0.5) * 0.95 ** 0.9),
    (10, 1e-4 * 0.9 ** 0.9),  # warmup over
    (50, 1e-4 * 0.5 ** 0.9),
    (100, 0.0),
    (150, 0.0),  # clamped past the end
])
def test_warmup_poly_schedule_values(step, expected):
  lr = optim.learning_rate_schedule(_train_cfg())(step)
  np.testing.assert_allclose(float(lr), expected, rtol=1e-6, atol=1e-14)


def test_schedule_rejects_bad_num_steps():
  with pytest.raises(ValueError, match=r'config.train.num_steps must be > 0, got 0'):
    optim.learning_rate_schedule(_train_cfg(num_steps=0))


def test_optimizer_state_has_no_clip_arrays():
  params = _params()
  state = optim.make_optimizer(_train_cfg()).init(params)
  shapes = [x.shape for x in jax.tree.leaves(state)]
  assert (5, 7, 3, 11) not in shapes and (11,) not in shapes
  trainable = sum(x.size for k, v in params.items() if k not in optim.FROZEN_KEYS for x in jax.tree.leaves(v))
  moments = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0 or x.dtype != jnp.int32)
  assert moments == 2 * trainable  # Adam mu and nu for the trainable leaves only (+ int32 step counts)


def _adam(gs, lr_fn, p0, wd, b1=0.9, b2=0.999, eps=1e-8):
  """Textbook AdamW (decoupled decay, bias correction), one array, list of gradients."""
  m = v = np.zeros_like(p0)
  p = p0.copy()
  for t, g in enumerate(gs, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
    p = p - lr_fn(t - 1) * (mh / (np.sqrt(vh) + eps) + wd * p)
  return p


def test_two_steps_clip_over_trainable_only_and_decay_groups():
  cfg = _train_cfg(lr=1e-2)
  tx = optim.make_optimizer(cfg)
  params = jax.tree.map(lambda x: x * 0.5, _params())
  state = tx.init(params)
  rng = np.random.default_rng(0)
  grads1 = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  grads1['clip_visual']['stem']['kernel'] = grads1['clip_visual']['stem']['kernel'] * 1e6  # must not count
  grads2 = jax.tree.map(lambda g: g * 1e-5, grads1)  # norm far below the 0.01 threshold: not clipped
  trainable_norm = float(np.sqrt(sum(np.sum(np.square(x)) for k, v in grads1.items()
                                     if k not in optim.FROZEN_KEYS for x in jax.tree.leaves(v))))
  assert trainable_norm > 1.0
  new = params
  for g in (grads1, grads2):
    updates, state = tx.update(g, state, new)
    new = optax.apply_updates(new, updates)
  sched = optim.learning_rate_schedule(cfg)
  lr_fn = lambda s: float(sched(s))
  scale1 = 0.01 / trainable_norm  # global-norm clip of step 1 over the trainable leaves only

  def expected(path, wd):
    g1 = np.asarray(grads1[path[0]][path[1]][path[2]][path[3]] if len(path) == 4 else grads1[path[0]])
    p0 = np.asarray(params[path[0]][path[1]][path[2]][path[3]] if len(path) == 4 else params[path[0]])
    return _adam([g1 * scale1, g1 * 1e-5], lr_fn, p0, wd)

  got = lambda path: np.asarray(new[path[0]][path[1]][path[2]][path[3]] if len(path) == 4 else new[path[0]])
  for path, wd in [(('mask_decoder', 'layer_0', 'Dense_0', 'kernel'), 0.05),
                   (('mask_decoder', 'layer_0', 'Dense_0', 'bias'), 0.0),
                   (('mask_decoder', 'layer_0', 'LayerNorm_0', 'scale'), 0.0),
                   (('void_embedding',), 0.0)]:
    np.testing.assert_allclose(got(path), expected(path, wd), rtol=1e-5, atol=1e-8, err_msg=str(path))
  np.testing.assert_array_equal(new['clip_visual']['stem']['kernel'], params['clip_visual']['stem']['kernel'])
  np.testing.assert_array_equal(new['clip_logit_scale'], params['clip_logit_scale'])
