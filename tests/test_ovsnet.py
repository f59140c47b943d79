"""OVSNet: output shapes/dtypes, gradients only into trainable params, CLIP placement, fusions, full-B compile."""
import re

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import smoke
from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.models import attention_fusion
from ovsnet_jax.models import clip_convnext
from ovsnet_jax.models import heads
from ovsnet_jax.models import ovsnet

B, H, W, K, S = 2, 64, 96, 5, 2


def tiny_config(**model_overrides):
  c = smoke.get_config()
  c.model.compute_dtype = 'bfloat16'
  c.model.update(model_overrides)
  return c


def random_text(k=K, s=S, d=32, seed=0):
  rng = np.random.default_rng(seed)
  e = rng.normal(size=(k, s, d)).astype(np.float32)
  valid = np.ones((k, s), bool)
  valid[0, 1:] = False  # class 0 has one synonym
  e = e / np.linalg.norm(e, axis=-1, keepdims=True) * valid[..., None]
  return {'embeds': jnp.asarray(e), 'valid': jnp.asarray(valid)}


@pytest.fixture(scope='module')
def tiny(tiny_clip_dir):
  config = tiny_config()
  _, clip_params = convert.load_clip_checkpoint(tiny_clip_dir)
  params = jax.jit(lambda key: ovsnet.init_params(config, key, clip_params))(jax.random.PRNGKey(0))
  images = jnp.asarray(np.random.default_rng(1).uniform(0, 255, (B, H, W, 3)), jnp.float32)
  return config, clip_params, params, images


def test_output_shapes_and_dtypes(tiny):
  config, _, params, images = tiny
  model = ovsnet.build_model(config)
  logits, out = jax.jit(lambda p, x, t: model.apply({'params': p}, x, t, train=False))(params, images, random_text())
  L1, Q, D = 4, 16, 32  # 3 decoder layers -> 4 predictions
  f32 = jnp.float32
  assert config.model.gfa.affinity == 'per_query'  # the default reading: one system per query
  systems = (L1, B, Q)  # a Q x Q reading ('query', 'random_walk') has one system per image: (L1, B)
  expected = {
      'pred_logits': ((L1, B, Q, K + 1), f32), 'pred_masks': ((L1, B, Q, H // 4, W // 4), f32),
      'query_embeds': ((L1, B, Q, D), f32), 'clip_embeds': ((L1, B, Q, D), f32),
      'fused_embeds': ((L1, B, Q, D), f32), 'fused_query': ((L1, B, Q, D), f32), 'fused_clip': ((L1, B, Q, D), f32),
      'out_vocab_logits': ((B, Q, K), f32), 'logit_scale': ((), f32),
      'gfa': {'condition': (systems, f32), 'singular': (systems, jnp.bool_), 'rel_residual': (systems, f32),
              'spectral_bound': (systems, f32), 'num_singular': ((), jnp.int32),
              'fused_cosine': ((L1, B), f32), 'input_cosine': ((L1, B), f32), 'own_nearest': ((L1, B), f32)}}
  assert jax.tree.map(lambda x: (x.shape, x.dtype), out) == expected
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(out['pred_logits'][-1]))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(out))
  assert int(out['gfa']['num_singular']) == 0
  # The classified embedding is GFA's F_C^inf of (F_Q, F_C) at every prediction; logits are its cosines.
  assert not np.allclose(np.asarray(out['fused_embeds']), np.asarray(out['query_embeds']))
  scale = min(np.exp(np.log(1 / 0.07)), 100)
  f = np.asarray(out['fused_embeds'][-1, 0, 3])
  t = np.asarray(random_text()['embeds'][2])  # (S, D)
  np.testing.assert_allclose(float(out['pred_logits'][-1, 0, 3, 2]), scale * (t @ f / np.linalg.norm(f)).max(),
                             rtol=1e-4)
  assert sorted(params) == ['class_head', 'clip_logit_scale', 'clip_visual', 'logit_scale', 'mask_decoder',
                            'pixel_decoder', 'void_embedding']
  # fused_query / fused_clip (what Proxy Calibration mixes) are GFA's F_Q^inf / F_C^inf of (F_Q, F_C).
  from ovsnet_jax.models import gfa  # pylint: disable=g-import-not-at-top
  _, want = gfa.gradient_free_aggregation(out['query_embeds'][-1], out['clip_embeds'][-1], config.model.gfa)
  np.testing.assert_allclose(out['fused_query'][-1], want['fused_query'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['fused_clip'][-1], want['fused_clip'], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out['fused_embeds'], out[config.model.gfa.classify])


def test_gradients_reach_exactly_the_trainable_params(tiny):
  config, _, params, images = tiny
  model = ovsnet.build_model(config)
  text = random_text()
  rng = np.random.default_rng(2)
  w_logits = jnp.asarray(rng.normal(size=(4, B, 16, K + 1)), jnp.float32)
  w_masks = jnp.asarray(rng.normal(size=(4, B, 16, H // 4, W // 4)), jnp.float32)

  def loss(p):
    _, out = model.apply({'params': p}, images, text, train=True)
    return (out['pred_logits'] * w_logits).sum() + (out['pred_masks'] * w_masks).mean() + out['clip_embeds'].sum()

  grads = jax.jit(jax.grad(loss))(params)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  frozen, trainable = [], []
  for path, g in flat:
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    (frozen if re.match(r'clip_(visual|logit_scale)', name) else trainable).append((name, float(jnp.abs(g).max())))
  assert len(frozen) > 10 and all(v == 0.0 for _, v in frozen), [n for n, v in frozen if v]
  # MSDeformAttn zero-initialises sampling_offsets and attention_weights (Mask2Former), so the
  # pixel decoder's level_embed (added to the attention queries only) has no gradient at step 0.
  grad = dict(trainable)
  assert [n for n, v in trainable if not v > 0] == ['pixel_decoder/level_embed']
  assert all(grad[n] > 0 for n in grad if re.search(r'sampling_offsets/kernel|attention_weights/kernel', n))
  assert sum(1 for n in grad if 'sampling_offsets/kernel' in n) == 1


def test_clip_params_are_placed_and_checked(tiny):
  config, clip_params, params, _ = tiny
  same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                      params['clip_visual'], clip_params['visual'])
  assert all(jax.tree.leaves(same))
  assert float(params['clip_logit_scale']) == float(clip_params['logit_scale'])
  bad = dict(clip_params, visual=jax.tree.map(lambda x: x[..., :1], clip_params['visual']))
  with pytest.raises(ValueError, match=r"clip_params\['visual'\]: shapes/dtypes do not match CLIP variant 'test_tiny'"):
    jax.eval_shape(lambda: ovsnet.init_params(config, jax.random.PRNGKey(0), bad))


def test_out_of_vocab_path_equals_open_clip_image_embedding(tiny, tiny_clip_checkpoint):
  """With a mask covering the whole image, F_C is open_clip's encode_image (global pool + head)."""
  import open_clip  # pylint: disable=g-import-not-at-top
  config, clip_params, _, images = tiny
  torch_model = open_clip.create_model(tiny_clip_checkpoint['model_name'],
                                       pretrained=tiny_clip_checkpoint['safetensors'])
  torch_model.eval()
  m = config.model
  x = (np.asarray(images) - np.asarray(m.pixel_mean, np.float32)) / np.asarray(m.pixel_std, np.float32)
  with torch.no_grad():
    ref = torch_model.encode_image(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()  # (B, D)
  visual = clip_convnext.CLIPVisual('test_tiny')

  def f_c(x):
    res5 = visual.apply({'params': clip_params['visual']}, x)['res5']
    full = jnp.ones((1, B, 3, H // 4, W // 4))  # (L, B, Q, h4, w4), every pixel positive
    return visual.apply({'params': clip_params['visual']}, res5, full,
                        method=lambda mdl, r, msk: heads.clip_embeddings(mdl, r, msk))

  got = np.asarray(jax.jit(f_c)(jnp.asarray(x)))  # (1, B, 3, D)
  for q in range(3):
    np.testing.assert_allclose(got[0, :, q], ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize('kind', ['self_attn', 'cross_attn'])
def test_attention_fusion_starts_at_f_c_and_learns(kind):
  rng = np.random.default_rng(3)
  f_q, f_c = (jnp.asarray(rng.normal(size=(2, 6, 32)), jnp.float32) for _ in range(2))
  module = attention_fusion.AttentionFusion(kind, num_heads=4, mlp_ratio=2)
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), f_q, f_c)
  out = jax.jit(module.apply)(variables, f_q, f_c)
  np.testing.assert_allclose(np.asarray(out), np.asarray(f_c / jnp.linalg.norm(f_c, axis=-1, keepdims=True)), atol=1e-6)
  grads = jax.jit(jax.grad(lambda v: (module.apply(v, f_q, f_c) * f_c).sum()))(variables)['params']
  assert float(jnp.abs(grads['layers_0']['attention']['out']['kernel']).max()) > 0
  assert float(jnp.abs(grads['layers_0']['fc2']['kernel']).max()) > 0
  with pytest.raises(ValueError, match=r'model.attn_fusion.num_heads: 5 does not divide D=32'):
    attention_fusion.AttentionFusion(kind, num_heads=5).init(jax.random.PRNGKey(0), f_q, f_c)


@pytest.mark.parametrize('fusion', ['none', 'cross_attn'])
def test_other_fusions_in_the_model(tiny, fusion):
  _, clip_params, _, images = tiny
  config = tiny_config(fusion=fusion)
  config.model.attn_fusion.num_heads = 4
  config.model.gfa.all_layers = False
  params = jax.eval_shape(lambda: ovsnet.init_params(config, jax.random.PRNGKey(0), clip_params))
  assert ('fusion' in params) == (fusion == 'cross_attn')
  model = ovsnet.build_model(config)
  out = jax.eval_shape(lambda p: model.apply({'params': p}, images, random_text(), train=True)[1], params)
  assert 'gfa' not in out and 'out_vocab_logits' not in out
  assert out['fused_embeds'].shape == out['fused_query'].shape == out['fused_clip'].shape == (4, B, 16, 32)


def test_without_fusion_pc_mixes_f_q_and_the_raw_clip_feature_which_has_no_gradient():
  """fusion 'none' (Table 3's +PC row): fused_query is F_Q, fused_clip the raw pooled F_C, and no
  parameter gets a gradient through F_C (so L_PC there trains nothing). Read off the traced programs
  (no compile): the outputs are the very same values, and every gradient is a broadcast zero."""
  config = smoke.get_config('tiny')
  config.model.fusion = 'none'
  model = ovsnet.build_model(config)
  params = jax.eval_shape(lambda: ovsnet.init_params(config, jax.random.PRNGKey(0), image_size=32))
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  text = random_text(d=32)

  def outputs(p, x):
    return model.apply({'params': p}, x, text, train=True)[1]

  out_jaxpr = jax.make_jaxpr(outputs, return_shape=True)(params, images)
  closed, shapes = out_jaxpr
  names = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]]
  var = dict(zip(names, closed.jaxpr.outvars))
  assert var["['fused_query']"] is var["['query_embeds']"] and var["['fused_clip']"] is var["['clip_embeds']"]
  weights = jnp.arange(32.0)
  grad_jaxpr = jax.make_jaxpr(jax.grad(lambda p, x: (outputs(p, x)['fused_clip'] * weights).sum()))(params, images)
  producers = {v: e for e in grad_jaxpr.jaxpr.eqns for v in e.outvars}

  def is_zero(v):
    if isinstance(v, jax.extend.core.Literal):
      return float(v.val) == 0.0
    e = producers.get(v)
    return e is not None and e.primitive.name in ('broadcast_in_dim', 'convert_element_type') and is_zero(e.invars[0])

  assert len(grad_jaxpr.jaxpr.outvars) == len(jax.tree.leaves(params))
  assert all(is_zero(v) for v in grad_jaxpr.jaxpr.outvars)
  # The check can fail: F_Q's gradient is not structurally zero.
  q_grad = jax.make_jaxpr(jax.grad(lambda p, x: (outputs(p, x)['fused_query'] * weights).sum()))(params, images)
  assert not all(is_zero(v) for v in q_grad.jaxpr.outvars)


def test_bad_inputs_raise(tiny):
  config, _, params, images = tiny
  model = ovsnet.build_model(config)
  with pytest.raises(ValueError, match=r'OVSNet: images must be \(B, H, W, 3\) with H, W multiples of 32, '
                                       r'got \(2, 60, 96, 3\)'):
    jax.eval_shape(lambda: model.apply({'params': params}, images[:, :60], random_text(), train=False))
  with pytest.raises(ValueError, match=r"OVSNet: text\['embeds'\] must be \(K, S, 32\) for test_tiny, got \(5, 2, 8\)"):
    jax.eval_shape(lambda: model.apply({'params': params}, images, random_text(d=8), train=False))
  with pytest.raises(ValueError,
                     match=r"model.fusion: expected one of \('none', 'gfa', 'self_attn', 'cross_attn'\), got 'sum'"):
    ovsnet.build_model(tiny_config(fusion='sum'))


@pytest.mark.slow
def test_full_base_model_lowers_at_1024_and_compiles():
  """OVSNet-B (convnext_base_w_320, real widths, Q 100, 9 layers): lower at 1024, compile (see README)."""
  from configs import ovsnet_base  # pylint: disable=g-import-not-at-top
  config = ovsnet_base.get_config()
  model = ovsnet.build_model(config)
  shapes = ovsnet.param_shapes(config)
  assert shapes['clip_visual']['proj']['kernel'].shape == (1024, 640)
  text = {'embeds': jax.ShapeDtypeStruct((133, 4, 640), jnp.float32), 'valid': jax.ShapeDtypeStruct((133, 4), bool)}
  apply = jax.jit(lambda p, x, t: model.apply({'params': p}, x, t, train=True)[1])
  images = jax.ShapeDtypeStruct((1, 1024, 1024, 3), jnp.float32)
  out = jax.eval_shape(apply, shapes, images, text)
  assert out['pred_masks'].shape == (10, 1, 100, 256, 256) and out['fused_embeds'].shape == (10, 1, 100, 640)
  lowered = apply.lower(shapes, images, text)  # 1024 x 1024, batch 1
  assert 'stablehlo' in lowered.as_text()
  compiled = lowered.compile()  # about 70 s on 2 shared CPU cores
  assert compiled.memory_analysis().argument_size_in_bytes > 4 * 100e6  # fp32 params are an argument
