"""Depthwise-conv formulations of the ConvNeXt trunk ('conv', 'shifted', 'auto'): each exact.

Parity against torch's grouped `conv2d` (one layer, random weights) and against open_clip's own
trunk (the tiny CLIP through the real conversion path), at max abs error <= 1e-5 * max abs of the
reference (fp32). The params are the same for every formulation (`nn.Conv`'s names and shapes).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.models import clip_convnext

import open_clip  # noqa: E402  (test extra: a missing install fails, never skips)

REL_TOL = 1e-5


def _rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize('impl', clip_convnext.DWCONV_IMPLS)
def test_depthwise_conv_matches_torch_grouped_conv2d(impl):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 9, 11, 6)).astype(np.float32)  # (B, H, W, C), odd sizes
  kernel = rng.normal(size=(7, 7, 1, 6)).astype(np.float32)
  bias = rng.normal(size=(6,)).astype(np.float32)
  conv = clip_convnext.DepthwiseConv(6, 7, impl)
  ours = jax.jit(conv.apply)({'params': {'kernel': kernel, 'bias': bias}}, x)
  want = torch.nn.functional.conv2d(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(kernel.transpose(3, 2, 0, 1)),
      torch.from_numpy(bias), padding=3, groups=6).numpy().transpose(0, 2, 3, 1)
  assert _rel_err(ours, want) <= REL_TOL


@pytest.mark.parametrize('impl', clip_convnext.DWCONV_IMPLS)
@pytest.mark.parametrize('shape', [(2, 9, 11, 6), (1, 5, 37, 3), (3, 4, 3, 5)])  # W < tile, 3 tiles, W < k
def test_depthwise_conv_gradients_match_torch_autograd(impl, shape):
  # 'shifted' has a hand-written VJP (banded kernel gradient, tiles of KERNEL_GRAD_TILE columns):
  # both gradients against torch's autograd of the grouped conv2d, for a random output cotangent.
  rng = np.random.default_rng(1)
  b, h, w, c = shape
  x = rng.normal(size=shape).astype(np.float32)
  kernel = rng.normal(size=(7, 7, 1, c)).astype(np.float32)
  cot = rng.normal(size=shape).astype(np.float32)
  grads = jax.jit(jax.grad(lambda x, k: jnp.sum(clip_convnext.depthwise_conv(x, k, impl) * cot),
                           argnums=(0, 1)))(x, kernel)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_()
  kt = torch.from_numpy(kernel.transpose(3, 2, 0, 1)).requires_grad_()
  out = torch.nn.functional.conv2d(xt, kt, padding=3, groups=c)
  (out * torch.from_numpy(cot.transpose(0, 3, 1, 2))).sum().backward()
  assert _rel_err(grads[0], xt.grad.numpy().transpose(0, 2, 3, 1)) <= REL_TOL
  assert _rel_err(grads[1], kt.grad.numpy().transpose(2, 3, 1, 0)) <= REL_TOL


def test_shifted_rejects_an_even_kernel():
  with pytest.raises(ValueError, match=r'expected an odd square kernel \(k, k, 1, C\), got \(4, 4, 1, 2\)'):
    clip_convnext.depthwise_conv(jnp.zeros((1, 8, 8, 2)), jnp.zeros((4, 4, 1, 2)), 'shifted')


def test_depthwise_conv_params_are_nn_conv_params():
  x = jnp.zeros((1, 8, 8, 4))
  ours = jax.eval_shape(clip_convnext.DepthwiseConv(4, 7, 'shifted').init, jax.random.PRNGKey(0), x)
  flax_conv = jax.eval_shape(
      __import__('flax').linen.Conv(4, (7, 7), padding=3, feature_group_count=4).init,
      jax.random.PRNGKey(0), x)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), ours) == jax.tree.map(
      lambda a: (a.shape, a.dtype), flax_conv)


def test_bad_dwconv_impl_raises():
  with pytest.raises(ValueError, match=r"dwconv: expected one of \('auto', 'conv', 'shifted'\)"):
    clip_convnext.DepthwiseConv(4, 7, 'fft').init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)))


def test_trunk_formulations_match_open_clip(tiny_clip_checkpoint, tiny_clip_dir):
  model = open_clip.create_model(tiny_clip_checkpoint['model_name'],
                                 pretrained=tiny_clip_checkpoint['bin']).eval()
  images = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    h, want = model.visual.trunk.stem(torch.from_numpy(images.transpose(0, 3, 1, 2))), {}
    for i, stage in enumerate(model.visual.trunk.stages):
      h = stage(h)
      want[f'res{i + 2}'] = h.numpy().transpose(0, 2, 3, 1)
  _, params = convert.load_clip_checkpoint(tiny_clip_dir)
  for impl in clip_convnext.DWCONV_IMPLS:
    visual = clip_convnext.CLIPVisual('test_tiny', dwconv=impl)
    ours = jax.jit(visual.apply)({'params': params['visual']}, images)
    errors = {k: _rel_err(ours[k], want[k]) for k in want}
    assert all(e <= REL_TOL for e in errors.values()), (impl, errors)
