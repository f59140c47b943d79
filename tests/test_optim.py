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
  """A param tree laid out like OVSNet's (module names as in the models), CLIP-only shape (5, 7, 3, 11)."""
  f = lambda *s: jnp.ones(s, jnp.float32)
  return {
      'clip_visual': {'stem': {'kernel': f(5, 7, 3, 11), 'bias': f(11)}},
      'clip_logit_scale': f(),
      'mask_decoder': {
          'query_feat': f(4, 6), 'query_embed': f(4, 6), 'level_embed': f(3, 6),
          'layers_0': {'linear1': {'kernel': f(6, 6), 'bias': f(6)}, 'cross_norm': {'scale': f(6), 'bias': f(6)}},
      },
      'pixel_decoder': {
          'level_embed': f(3, 6),
          'encoder_layers_0': {'self_attn': {'sampling_offsets': {'kernel': f(6, 12), 'bias': f(12)}}},
          'adapter_1': {'norm': {'scale': f(6), 'bias': f(6)}, 'conv': {'kernel': f(1, 1, 6, 6)}},
      },
      'void_embedding': f(8),
      'logit_scale': f(),
  }


# FC-CLIP's build_optimizer: weight decay 0 for norm modules and nn.Embedding modules only.
FCCLIP_LABELS = {
    'clip_visual/stem/kernel': 'frozen', 'clip_visual/stem/bias': 'frozen', 'clip_logit_scale': 'frozen',
    'mask_decoder/query_feat': 'no_decay', 'mask_decoder/query_embed': 'no_decay',
    'mask_decoder/level_embed': 'no_decay',  # nn.Embedding in FC-CLIP's transformer decoder
    'mask_decoder/layers_0/linear1/kernel': 'decay', 'mask_decoder/layers_0/linear1/bias': 'decay',
    'mask_decoder/layers_0/cross_norm/scale': 'no_decay', 'mask_decoder/layers_0/cross_norm/bias': 'no_decay',
    'pixel_decoder/level_embed': 'decay',  # nn.Parameter in FC-CLIP's MSDeformAttn encoder
    'pixel_decoder/encoder_layers_0/self_attn/sampling_offsets/kernel': 'decay',
    'pixel_decoder/encoder_layers_0/self_attn/sampling_offsets/bias': 'decay',
    'pixel_decoder/adapter_1/norm/scale': 'no_decay', 'pixel_decoder/adapter_1/norm/bias': 'no_decay',
    'pixel_decoder/adapter_1/conv/kernel': 'decay', 'void_embedding': 'no_decay', 'logit_scale': 'decay'}
# The previous rule: every ndim <= 1 parameter and every embedding table undecayed.
ALL_1D_CHANGES = {'mask_decoder/layers_0/linear1/bias': 'no_decay', 'pixel_decoder/level_embed': 'no_decay',
                  'pixel_decoder/encoder_layers_0/self_attn/sampling_offsets/bias': 'no_decay',
                  'logit_scale': 'no_decay'}


def _flat(tree):
  return {optim.path_to_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize('rule,expected', [('fcclip', FCCLIP_LABELS), ('all_1d', {**FCCLIP_LABELS, **ALL_1D_CHANGES})])
def test_param_labels_by_rule(rule, expected):
  assert _flat(optim.param_labels(_params(), rule)) == expected


def test_fcclip_rule_on_the_real_param_tree():
  """On OVSNet's own tree: no decay exactly for norm params and the decoder's / void embedding tables."""
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.models import ovsnet  # pylint: disable=g-import-not-at-top
  labels = _flat(optim.param_labels(ovsnet.param_shapes(smoke.get_config('tiny'))))
  no_decay = {p for p, l in labels.items() if l == 'no_decay'}
  norms = {p for p in labels if p.count('/') >= 1 and 'norm' in p.split('/')[-2].lower()
           and not p.startswith('clip_visual/')}
  assert norms and all(p.endswith(('/scale', '/bias')) for p in norms)
  assert no_decay == norms | {'mask_decoder/query_feat', 'mask_decoder/query_embed', 'mask_decoder/level_embed',
                              'void_embedding'}
  for p in ('pixel_decoder/level_embed', 'logit_scale', 'pixel_decoder/mask_features/bias',
            'pixel_decoder/encoder_layers_0/self_attn/sampling_offsets/bias'):
    assert labels[p] == 'decay', p
  assert {p.split('/')[0] for p, l in labels.items() if l == 'frozen'} == set(optim.FROZEN_KEYS)


def test_no_decay_rule_rejects_unknown():
  with pytest.raises(ValueError, match=r"config.train.no_decay must be one of \('fcclip', 'all_1d'\), got 'x'"):
    optim.make_optimizer(_train_cfg(no_decay='x'))


def test_default_schedule_has_no_warmup_as_fcclip():
  """FC-CLIP / Mask2Former COCO: WARMUP_FACTOR 1.0, so the lr is the pure poly schedule from step 0."""
  cfg = common.get_base_config().train
  sched = optim.learning_rate_schedule(cfg)
  for step in (0, 5, 1000):
    np.testing.assert_allclose(float(sched(step)), 1e-4 * (1 - step / 60_000) ** 0.9, rtol=1e-6)


@pytest.mark.parametrize('step,expected', [
    (0, 1e-4 * 0.001),  # warmup starts at warmup_factor * lr
    (5, 1e-4 * (0.001 * 0.5 + 0.5) * 0.95 ** 0.9),
    (10, 1e-4 * 0.9 ** 0.9),  # warmup over
    (50, 1e-4 * 0.5 ** 0.9),
    (100, 0.0),
    (150, 0.0),  # clamped past the end
])
def test_warmup_poly_schedule_values(step, expected):
  lr = optim.learning_rate_schedule(_train_cfg(warmup_factor=0.001))(step)
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


@pytest.mark.parametrize('rule', ['fcclip', 'all_1d'])
def test_two_steps_clip_over_trainable_only_and_decay_groups(rule):
  cfg = _train_cfg(lr=1e-2, no_decay=rule, warmup_factor=0.001)
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

  g1s, p0s, news = _flat(grads1), _flat(params), _flat(new)
  decayed = 0.05 if rule == 'fcclip' else 0.0  # biases, logit scale, pixel-decoder level_embed
  for path, wd in [('mask_decoder/layers_0/linear1/kernel', 0.05),
                   ('mask_decoder/layers_0/linear1/bias', decayed),
                   ('mask_decoder/layers_0/cross_norm/scale', 0.0),
                   ('mask_decoder/query_feat', 0.0),
                   ('pixel_decoder/level_embed', decayed),
                   ('logit_scale', decayed),
                   ('void_embedding', 0.0)]:
    want = _adam([np.asarray(g1s[path]) * scale1, np.asarray(g1s[path]) * 1e-5], lr_fn, np.asarray(p0s[path]), wd)
    np.testing.assert_allclose(news[path], want, rtol=1e-5, atol=1e-8, err_msg=path)
  np.testing.assert_array_equal(new['clip_visual']['stem']['kernel'], params['clip_visual']['stem']['kernel'])
  np.testing.assert_array_equal(new['clip_logit_scale'], params['clip_logit_scale'])
