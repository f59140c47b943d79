"""MSDeformAttnPixelDecoder vs transformers' Mask2FormerPixelDecoder (same random weights, fp32).

The HF module has Mask2Former's real structure (3 encoder levels, 4 points, GroupNorm 32, one FPN
level with res2, 1x1 mask projection); the test reduces widths (64), FFN (128) and resolution.
transformers and Mask2Former/FC-CLIP agree on everything this module computes (sine embedding
without the -0.5 offset, level embedding added to the position embedding, reference points at the
pixel centres, bilinear upsampling in the FPN), so the comparison needs no bridging beyond the
layout (NCHW -> NHWC, Linear/Conv weight transposes).
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
from ovsnet_jax.models import pixel_decoder as pdm
from ovsnet_jax.models.layers import sine_position_embedding



@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  """fp32 parity: no TF32/bf16 passes on accelerators (CPU computes fp32 matmuls exactly anyway)."""
  with jax.default_matmul_precision('highest'):
    yield

CHANNELS = (16, 24, 32, 48)  # res2..res5
WIDTH, FFN, LAYERS = 64, 128, 6


def _features(seed, height=128, width=96, batch=2):
  rng = np.random.default_rng(seed)
  return {f'res{i + 2}': rng.normal(size=(batch, height // s, width // s, c)).astype(np.float32)
          for i, (s, c) in enumerate(zip((4, 8, 16, 32), CHANNELS))}


def _hf_decoder(seed):
  config = Mask2FormerConfig(feature_size=WIDTH, mask_feature_size=WIDTH, encoder_layers=LAYERS,
                             num_attention_heads=8, encoder_feedforward_dim=FFN, common_stride=4,
                             feature_strides=[4, 8, 16, 32], dropout=0.0)
  module = hf.Mask2FormerPixelDecoder(config, feature_channels=list(CHANNELS)).eval()
  port.randomize_(module, seed)
  return module


def _module(impl='gather'):
  return pdm.MSDeformAttnPixelDecoder(conv_dim=WIDTH, mask_dim=WIDTH, num_layers=LAYERS, num_heads=8,
                                      num_points=4, ffn_dim=FFN, num_groups=32, deform_impl=impl)


@pytest.mark.parametrize('impl', ['gather', 'onehot'])
def test_matches_transformers(impl):
  ref = _hf_decoder(0)
  feats = _features(1)
  with torch.no_grad():
    out = ref([torch.from_numpy(feats[f'res{i}']).permute(0, 3, 1, 2) for i in range(2, 6)])
  params = port.pixel_decoder_params(ref)
  mask_features, multi_scale = jax.jit(_module(impl).apply)({'params': params}, feats)
  want = out.mask_features.permute(0, 2, 3, 1).numpy()
  assert mask_features.shape == (2, 32, 24, WIDTH) and mask_features.dtype == jnp.float32
  scale = np.abs(want).max()
  np.testing.assert_allclose(np.asarray(mask_features), want, atol=1e-4 * scale, rtol=0)
  assert [x.shape for x in multi_scale] == [(2, 4, 3, WIDTH), (2, 8, 6, WIDTH), (2, 16, 12, WIDTH)]
  for got, ref_level in zip(multi_scale, out.multi_scale_features):
    np.testing.assert_allclose(np.asarray(got), ref_level.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=0)


def test_param_tree_and_init():
  module = _module()
  params = jax.eval_shape(module.init, jax.random.PRNGKey(0), _features(0, 64, 64, 1))['params']
  ported = port.pixel_decoder_params(_hf_decoder(0))
  assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(lambda x: x.shape, ported)
  params = jax.jit(_module().clone(num_layers=1).init)(jax.random.PRNGKey(0), _features(0, 64, 64, 1))['params']
  attn = params['encoder_layers_0']['self_attn']
  assert not np.any(np.asarray(attn['sampling_offsets']['kernel']))
  assert float(np.std(np.asarray(params['level_embed']))) > 0.5  # N(0, 1)
  assert not np.any(np.asarray(params['input_proj_0']['conv']['bias']))


def test_sine_position_embedding_matches_transformers():
  ref = hf.Mask2FormerSinePositionEmbedding(num_position_features=16, normalize=True)
  want = ref((1, 3, 5, 7), 'cpu', torch.float32)[0].permute(1, 2, 0).numpy()
  got = sine_position_embedding(5, 7, 16)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, rtol=0)
  # Hand-computed: channel 0 of the y part is sin(y / (h + 1e-6) * 2 pi); row 1 of 4 -> sin(pi / 2).
  np.testing.assert_allclose(float(sine_position_embedding(4, 2, 4)[0, 0, 0]), 1.0, atol=1e-6)


def test_reference_points_are_pixel_centres():
  ref = pdm.reference_points(((2, 4), (1, 1)))
  np.testing.assert_allclose(np.asarray(ref), [[0.125, 0.25], [0.375, 0.25], [0.625, 0.25], [0.875, 0.25],
                                               [0.125, 0.75], [0.375, 0.75], [0.625, 0.75], [0.875, 0.75],
                                               [0.5, 0.5]])


def test_from_config_and_bad_input():
  cfg = ml_collections.ConfigDict(dict(conv_dim=32, mask_dim=16, num_layers=1, num_heads=4, num_points=2,
                                       ffn_dim=64, num_groups=8, deform_impl='onehot'))
  module = pdm.MSDeformAttnPixelDecoder.from_config(cfg)
  feats = _features(0, 64, 64, 1)
  (mask_features, multi_scale), _ = jax.eval_shape(module.init_with_output, jax.random.PRNGKey(0), feats)
  assert mask_features.shape == (1, 16, 16, 16)
  assert [x.shape for x in multi_scale] == [(1, 2, 2, 32), (1, 4, 4, 32), (1, 8, 8, 32)]
  del feats['res4']
  with pytest.raises(ValueError, match=r"feats is missing 'res4' \(got keys \['res2', 'res3', 'res5'\]\)"):
    module.init(jax.random.PRNGKey(0), feats)


def test_full_size_param_count_matches_transformers():
  # FC-CLIP's real sizes with ConvNeXt-B channels: the param trees agree leaf by leaf.
  channels = (128, 256, 512, 1024)
  ref = hf.Mask2FormerPixelDecoder(Mask2FormerConfig(), feature_channels=list(channels))
  feats = {f'res{i + 2}': jax.ShapeDtypeStruct((1, 64 // s, 64 // s, c), jnp.float32)
           for i, (s, c) in enumerate(zip((4, 8, 16, 32), channels))}
  params = jax.eval_shape(pdm.MSDeformAttnPixelDecoder().init, jax.random.PRNGKey(0), feats)['params']
  shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)
  assert shapes(params) == shapes(port.pixel_decoder_params(ref))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert count == sum(p.numel() for p in ref.parameters())


def test_remat_layers_gives_the_same_outputs_and_gradients():
  """`remat_layers` recomputes the scanned encoder layers in the backward pass; nothing else changes."""
  feats = _features(3, 64, 64, 1)
  plain = _module('window')
  params = jax.jit(plain.init)(jax.random.PRNGKey(0), feats)['params']

  def loss(module, p, x):
    mask_features, multi_scale = module.apply({'params': p}, x)
    return (mask_features ** 2).mean() + sum((m ** 2).mean() for m in multi_scale)

  grads = remat_check.assert_remat_is_exact(loss, plain, plain.clone(remat_layers=True), params, feats)
  assert max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads[0]['encoder_layers_5'])) > 0
