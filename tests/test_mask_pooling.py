"""Mask pooling: hand-computed cases, parity with FC-CLIP's PyTorch MaskPooling, gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovsnet_jax.models import mask_pooling


def torch_mask_pool(features_nchw, mask_logits):
  """FC-CLIP's MaskPooling (fcclip_transformer_decoder.py), written out in torch as the reference."""
  mask = F.interpolate(mask_logits, size=features_nchw.shape[-2:], mode='bilinear', align_corners=False)
  mask = (mask > 0).to(features_nchw.dtype)
  denorm = mask.sum(dim=(-1, -2), keepdim=True) + 1e-8
  return torch.einsum('bchw,bqhw->bqc', features_nchw, mask / denorm)


def test_hand_computed_same_grid():
  feats = jnp.arange(8, dtype=jnp.float32).reshape(1, 2, 2, 2)  # pixels (0,1) (2,3) / (4,5) (6,7)
  logits = jnp.array([[[[1., -1.], [-1., 2.]],   # pixels (0,0), (1,1) -> mean of (0,1),(6,7) = (3,4)
                       [[-1., -1.], [-1., -1.]],  # empty -> zeros
                       [[0., 5.], [5., 5.]]]])    # logit 0 is not > 0 -> mean of (2,3),(4,5),(6,7) = (4,5)
  pooled = mask_pooling.mask_pool(feats, logits)
  np.testing.assert_allclose(np.asarray(pooled[0]), [[3., 4.], [0., 0.], [4., 5.]], rtol=1e-6)


@pytest.mark.parametrize('mask_hw,feat_hw', [((32, 32), (4, 4)), ((16, 24), (32, 48)), ((20, 12), (7, 5))])
def test_parity_with_fcclip_torch(mask_hw, feat_hw):
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(2, *feat_hw, 6)).astype(np.float32)  # (B, h, w, C)
  logits = rng.normal(size=(2, 5, *mask_hw)).astype(np.float32)  # (B, Q, H, W)
  ref = torch_mask_pool(torch.from_numpy(feats).permute(0, 3, 1, 2), torch.from_numpy(logits)).numpy()
  got = np.asarray(mask_pooling.mask_pool(jnp.asarray(feats), jnp.asarray(logits)))
  # Binarisation is discontinuous: compare the resized logits too, then the pooled features.
  ref_resized = F.interpolate(torch.from_numpy(logits), size=feat_hw, mode='bilinear', align_corners=False).numpy()
  got_resized = np.asarray(mask_pooling.resize_mask_logits(jnp.asarray(logits), feat_hw))
  np.testing.assert_allclose(got_resized, ref_resized, atol=1e-5)
  np.testing.assert_allclose(got, ref, atol=1e-5)


def test_gradients_reach_features_not_masks():
  rng = np.random.default_rng(1)
  feats = jnp.asarray(rng.normal(size=(1, 4, 4, 3)), jnp.float32)
  logits = jnp.asarray(rng.normal(size=(1, 2, 8, 8)), jnp.float32)
  g_feat, g_mask = jax.grad(lambda f, m: mask_pooling.mask_pool(f, m).sum(), argnums=(0, 1))(feats, logits)
  assert float(jnp.abs(g_mask).max()) == 0.0
  masks = np.asarray(mask_pooling.binary_masks(logits, (4, 4)))[0]  # (Q, h, w)
  expected = (masks / (masks.sum((1, 2), keepdims=True) + 1e-8)).sum(0)  # d/dfeat of sum of means
  np.testing.assert_allclose(np.asarray(g_feat[0, ..., 0]), expected, rtol=1e-6)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match=r'features: expected \(B, h, w, C\), got shape \(4, 4, 3\)'):
    mask_pooling.mask_pool(jnp.zeros((4, 4, 3)), jnp.zeros((1, 2, 4, 4)))
  with pytest.raises(ValueError, match=r'mask_logits: expected \(B=2, Q, H, W\), got shape \(1, 2, 4, 4\)'):
    mask_pooling.mask_pool(jnp.zeros((2, 4, 4, 3)), jnp.zeros((1, 2, 4, 4)))
