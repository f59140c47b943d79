"""MaskedAttentionDecoder vs transformers' Mask2FormerTransformerModule (same random weights, fp32).

transformers' module has Mask2Former's structure: ``decoder_layers=10`` builds 9 layers + the
prediction on the learnable queries (10 predictions), cross -> self -> FFN post-norm, levels
cycling 1/32, 1/16, 1/8, level embedding on the memory, sine position on the keys, masks resized
bilinearly and blocked at sigmoid < 0.5 with all-blocked rows unblocked. Bridged differences:
layouts (sequence-first, NCHW) and weight layouts (torch's packed (3C, C) ``in_proj_weight`` of
the cross-attention is split into q/k/v; HF's self-attention already has separate projections).
The test reduces widths (64), FFN (128), queries (10) and resolution.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from transformers import Mask2FormerConfig
from transformers.models.mask2former import modeling_mask2former as hf

import hf_mask2former_port as port
import remat_check
from ovsnet_jax.models import mask_decoder as mdm



@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  """fp32 parity: no TF32/bf16 passes on accelerators (CPU computes fp32 matmuls exactly anyway)."""
  with jax.default_matmul_precision('highest'):
    yield

C, Q, FFN, LAYERS = 64, 10, 128, 9
SIZES = ((4, 3), (8, 6), (16, 12), (32, 24))  # 1/32, 1/16, 1/8, 1/4 of a 128x96 image


def _hf_module(seed, in_features):
  config = Mask2FormerConfig(hidden_dim=C, mask_feature_size=C, num_queries=Q, decoder_layers=LAYERS + 1,
                             dim_feedforward=FFN, num_attention_heads=8, pre_norm=False, dropout=0.0)
  module = hf.Mask2FormerTransformerModule(in_features=in_features, config=config).eval()
  port.randomize_(module, seed)
  return module


def _inputs(seed, in_features, batch=2):
  rng = np.random.default_rng(seed)
  multi_scale = [rng.normal(size=(batch, h, w, in_features)).astype(np.float32) for h, w in SIZES[:3]]
  # A shared direction plus noise: some queries' masks are negative everywhere (all blocked).
  mask_features = (rng.normal(size=(1, 1, 1, C)) + 0.3 * rng.normal(size=(batch, *SIZES[3], C)))
  return multi_scale, mask_features.astype(np.float32)


def _module(dtype=jnp.float32, layers=LAYERS):
  return mdm.MaskedAttentionDecoder(num_queries=Q, hidden_dim=C, num_heads=8, ffn_dim=FFN, num_layers=layers,
                                    mask_dim=C, dtype=dtype)


def _run_hf(ref, multi_scale, mask_features):
  nchw = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)
  with torch.no_grad():
    out = ref([nchw(x) for x in multi_scale], nchw(mask_features))
  queries = np.stack([q.transpose(0, 1).numpy() for q in out.intermediate_hidden_states])  # (L+1, B, Q, C)
  masks = np.stack([m.numpy() for m in out.masks_queries_logits])  # (L+1, B, Q, h, w)
  return queries, masks


@pytest.mark.parametrize('in_features', [C, 48])  # 48: with the 1x1 input projections
def test_matches_transformers(in_features):
  ref = _hf_module(0, in_features)
  multi_scale, mask_features = _inputs(1, in_features)
  want_q, want_m = _run_hf(ref, multi_scale, mask_features)
  params = port.transformer_params(ref)
  out = jax.jit(_module().apply)({'params': params}, multi_scale, mask_features)
  assert out['queries'].shape == (LAYERS + 1, 2, Q, C)
  assert out['pred_masks'].shape == (LAYERS + 1, 2, Q, *SIZES[3])
  # The masks must exercise the masking rules: at 1/32, some rows fully blocked (then unblocked).
  small = jax.image.resize(want_m[:-1], (LAYERS, 2, Q, *SIZES[0]), 'bilinear', antialias=False)
  all_blocked = np.asarray((small < 0).reshape(LAYERS, 2, Q, -1).all(-1))
  assert all_blocked.any() and not all_blocked.all()
  np.testing.assert_allclose(np.asarray(out['queries']), want_q, atol=1e-4, rtol=0)
  scale = np.abs(want_m).max()
  np.testing.assert_allclose(np.asarray(out['pred_masks']), want_m, atol=1e-4 * scale, rtol=0)


def test_param_tree_matches_port():
  ref = _hf_module(0, C)
  multi_scale, mask_features = _inputs(0, C, batch=1)
  params = jax.eval_shape(_module().init, jax.random.PRNGKey(0), multi_scale, mask_features)['params']
  shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)
  assert shapes(params) == shapes(port.transformer_params(ref))


def test_attention_block_mask_rules():
  # 2 queries on a 2x2 map, resized to 1x2 (averages rows): query 0 has one positive column,
  # query 1 is negative everywhere -> all blocked -> unblocked.
  logits = jnp.array([[[[1.0, -3.0], [0.5, -1.0]], [[-1.0, -2.0], [-0.5, -0.1]]]])  # (1, 2, 2, 2)
  blocked = mdm.attention_block_mask(logits, (1, 2))
  np.testing.assert_array_equal(np.asarray(blocked), [[[False, True], [False, False]]])
  # The blocking mask carries no gradient back to the predicted masks.
  grad = jax.grad(lambda m: mdm.attention_block_mask(m, (1, 2)).astype(jnp.float32).sum())(logits)
  assert not np.any(np.asarray(grad))


def test_bf16_close_to_fp32_and_differentiable():
  multi_scale, mask_features = _inputs(2, C, batch=1)
  fp32, bf16 = _module(layers=3), _module(jnp.bfloat16, layers=3)  # 3 layers: one per level
  params = jax.jit(fp32.init)(jax.random.PRNGKey(0), multi_scale, mask_features)['params']
  out32 = jax.jit(fp32.apply)({'params': params}, multi_scale, mask_features)
  out16 = jax.jit(bf16.apply)({'params': params}, multi_scale, mask_features)
  assert out16['queries'].dtype == jnp.float32 and out16['pred_masks'].dtype == jnp.float32
  # bf16 matmuls: first-prediction masks agree to bf16 precision relative to their scale.
  scale = float(jnp.abs(out32['pred_masks'][0]).max())
  assert float(jnp.abs(out16['pred_masks'][0] - out32['pred_masks'][0]).max()) < 0.05 * scale
  # After the first layer queries (LayerNorm'd, O(1)) agree closely; later layers drift more as
  # bf16 flips near-zero mask logits and so the attention masks (measured: mean 0.003 -> 0.07).
  diff = jnp.abs(out16['queries'] - out32['queries'])
  assert float(diff[1].max()) < 0.05 and float(diff.mean()) < 0.1

  def loss(p, feats):
    out = bf16.apply({'params': p}, multi_scale, feats)
    return out['pred_masks'].mean() + out['queries'].mean()
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, mask_features)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads[0]['layers_2']['cross_attn']['v_proj']['kernel']).max()) > 0


def test_from_config_and_bad_input():
  cfg = ml_collections.ConfigDict(dict(num_queries=5, hidden_dim=32, num_heads=4, ffn_dim=64, num_layers=2))
  module = mdm.MaskedAttentionDecoder.from_config(cfg, mask_dim=16)
  multi_scale, _ = _inputs(0, 32, batch=1)
  mask_features = np.zeros((1, *SIZES[3], 16), np.float32)
  out, _ = jax.eval_shape(module.init_with_output, jax.random.PRNGKey(0), multi_scale, mask_features)
  assert out['queries'].shape == (3, 1, 5, 32) and out['pred_masks'].shape == (3, 1, 5, 32, 24)
  with pytest.raises(ValueError, match=r'multi_scale must hold 3 levels \(1/32, 1/16, 1/8\), got 2'):
    module.init(jax.random.PRNGKey(0), multi_scale[:2], mask_features)
  with pytest.raises(ValueError, match=r'mask_features must be \(B, h, w, 16\), got \(1, 32, 24, 8\)'):
    module.init(jax.random.PRNGKey(0), multi_scale, mask_features[..., :8])


def test_full_size_param_tree_matches_transformers():
  # Mask2Former's real sizes (Q=100, C=256, FFN 2048, 9 layers): the param trees agree leaf by leaf.
  ref = hf.Mask2FormerTransformerModule(in_features=256, config=Mask2FormerConfig())
  multi_scale = [jax.ShapeDtypeStruct((1, h, w, 256), jnp.float32) for h, w in SIZES[:3]]
  mask_features = jax.ShapeDtypeStruct((1, *SIZES[3], 256), jnp.float32)
  params = jax.eval_shape(mdm.MaskedAttentionDecoder().init, jax.random.PRNGKey(0), multi_scale,
                          mask_features)['params']
  shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)
  assert shapes(params) == shapes(port.transformer_params(ref))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert count == sum(p.numel() for p in ref.parameters())


def test_pixel_decoder_feeds_decoder_at_full_config():
  # config.model at 1024^2 with ConvNeXt-B features: shapes per docs/CONTRACTS.md (shape-only trace).
  from configs.common import get_model_config
  from ovsnet_jax.models.pixel_decoder import MSDeformAttnPixelDecoder
  cfg = get_model_config()
  pixel_decoder = MSDeformAttnPixelDecoder.from_config(cfg.pixel_decoder)
  decoder = mdm.MaskedAttentionDecoder.from_config(cfg.decoder, mask_dim=cfg.pixel_decoder.mask_dim,
                                                   dtype=jnp.dtype(cfg.compute_dtype))
  feats = {f'res{i + 2}': jax.ShapeDtypeStruct((2, 1024 // s, 1024 // s, c), jnp.bfloat16)
           for i, (s, c) in enumerate(zip((4, 8, 16, 32), (128, 256, 512, 1024)))}

  def forward(rng, feats):
    (mask_features, multi_scale), _ = pixel_decoder.init_with_output(rng, feats)
    out, _ = decoder.init_with_output(rng, multi_scale, mask_features)
    return mask_features, multi_scale, out

  mask_features, multi_scale, out = jax.eval_shape(forward, jax.random.PRNGKey(0), feats)
  assert mask_features.shape == (2, 256, 256, 256) and mask_features.dtype == jnp.float32
  assert [x.shape for x in multi_scale] == [(2, 32, 32, 256), (2, 64, 64, 256), (2, 128, 128, 256)]
  assert out['queries'].shape == (10, 2, 100, 256) and out['queries'].dtype == jnp.float32
  assert out['pred_masks'].shape == (10, 2, 100, 256, 256) and out['pred_masks'].dtype == jnp.float32


def test_remat_layers_gives_the_same_outputs_and_gradients():
  """`remat_layers` recomputes each scanned round in the backward pass; nothing else changes."""
  multi_scale, mask_features = _inputs(4, C, batch=1)
  plain = _module(layers=6)  # two scanned rounds of 3 layers
  params = jax.jit(plain.init)(jax.random.PRNGKey(0), multi_scale, mask_features)['params']

  def loss(module, p, feats):
    out = module.apply({'params': p}, multi_scale, feats)
    return (out['pred_masks'] ** 2).mean() + out['queries'].mean()

  grads = remat_check.assert_remat_is_exact(loss, plain, plain.clone(remat_layers=True), params, mask_features)
  assert float(jnp.abs(grads[0]['layers_5']['cross_attn']['v_proj']['kernel']).max()) > 0
