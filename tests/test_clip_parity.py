"""Parity of our Flax CLIP with open_clip's own torch model, through the real conversion path.

open_clip builds the model (random weights, LayerNorms and layer scales perturbed), the weights
are saved as open_clip publishes them, converted by `convert_checkpoint` and read back by
`load_clip_checkpoint`. Tolerance: max abs error <= 1e-4 * max abs of the reference (fp32).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.convert import open_clip_testing
from ovsnet_jax.models import clip
from ovsnet_jax.models import clip_convnext

import open_clip  # noqa: E402  (test extra: a missing install fails, never skips)
import torch  # noqa: E402

REL_TOL = 1e-4
PROMPTS = ['a photo of a cat.', 'There is a large wall in the scene.',
           'a photo of the small traffic light, fire hydrant, stop sign.', '']


def rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def torch_reference(model, images: np.ndarray, pooled: np.ndarray, tokens) -> dict:
  """open_clip outputs: trunk stages as fc-clip reads them, encode_image/text, pooled head."""
  x = torch.from_numpy(images.transpose(0, 3, 1, 2))  # (B, 3, H, W)
  b, q, c = pooled.shape
  with torch.no_grad():
    out, h = {}, model.visual.trunk.stem(x)
    for i, stage in enumerate(model.visual.trunk.stages):
      h = stage(h)
      out[f'res{i + 2}'] = h.numpy().transpose(0, 2, 3, 1)  # (B, h, w, C)
    out['image'] = model.encode_image(x).numpy()
    head_in = torch.from_numpy(pooled.reshape(b * q, c, 1, 1))
    out['head'] = model.visual.head(model.visual.trunk.head(head_in)).numpy().reshape(b, q, -1)
    out['text'] = model.encode_text(tokens).numpy()
    out['logit_scale'] = model.logit_scale.numpy()
  return out


def flax_outputs(variant: str, params: dict, images: np.ndarray, pooled: np.ndarray,
                 tokens) -> dict:
  model = clip.CLIP(variant)
  visual = clip_convnext.CLIPVisual(variant)
  vparams = {'params': params['visual']}
  out = dict(jax.jit(visual.apply)(vparams, images))
  image, text, scale = jax.jit(model.apply)({'params': params}, images, tokens.numpy())
  out.update(image=image, text=text, logit_scale=scale,
             head=jax.jit(lambda p, x: visual.apply(p, x, method='head'))(vparams, pooled))
  return out


def check_parity(variant: str, model, ckpt_dir: str, size: int, record) -> dict:
  rng = np.random.default_rng(0)
  images = rng.standard_normal((2, size, size, 3)).astype(np.float32)
  pooled = rng.standard_normal((2, 3, clip.get_variant(variant).widths[-1])).astype(np.float32)
  tokens = open_clip.tokenize(PROMPTS)
  loaded_variant, params = convert.load_clip_checkpoint(ckpt_dir)
  assert loaded_variant == variant
  ref = torch_reference(model.eval(), images, pooled, tokens)
  ours = flax_outputs(variant, params, images, pooled, tokens)
  errors = {k: rel_err(ours[k], ref[k]) for k in ref}
  print(f'{variant} relative max abs errors: {errors}')
  for k, e in errors.items():
    record(f'{variant}_{k}_rel_err', e)
  assert ours['res5'].shape == (2, size // 32, size // 32, clip.get_variant(variant).widths[-1])
  assert all(e <= REL_TOL for e in errors.values()), errors
  return errors


def test_tiny_parity_with_open_clip(tiny_clip_checkpoint, tiny_clip_dir, record_property):
  model = open_clip.create_model(tiny_clip_checkpoint['model_name'],
                                 pretrained=tiny_clip_checkpoint['bin'])
  check_parity('test_tiny', model, tiny_clip_dir, 64, record_property)


def test_mlp_head_and_quick_gelu_parity_with_open_clip(tmp_path, record_property):
  """`test_tiny_mlp`: the 'mlp' image head of convnext_large_d_320 and QuickGELU text blocks."""
  name = open_clip_testing.register_test_variant('test_tiny_mlp', str(tmp_path / 'configs'))
  with torch.random.fork_rng():
    torch.manual_seed(1)
    model = open_clip.create_model(name, pretrained=None)
  assert isinstance(model.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
  assert model.visual.head.mlp.fc2.bias is None
  open_clip_testing.perturb_norms_and_scales(model, seed=2)
  paths = open_clip_testing.save_open_clip_weights(model, str(tmp_path / 'weights'),
                                                   formats=('bin',))
  out = convert.convert_checkpoint(name, paths['bin'], str(tmp_path / 'converted'))
  check_parity(name, model, out, 64, record_property)


@pytest.mark.slow
def test_convnext_base_w_320_parity_with_open_clip(tmp_path, record_property):
  with torch.random.fork_rng():
    torch.manual_seed(0)
    model = open_clip.create_model('convnext_base_w_320', pretrained=None)
  open_clip_testing.perturb_norms_and_scales(model, seed=1, gamma_std=0.1)
  paths = open_clip_testing.save_open_clip_weights(model, str(tmp_path / 'weights'),
                                                   formats=('safetensors',))
  out = convert.convert_checkpoint('convnext_base_w_320', paths['safetensors'],
                                   str(tmp_path / 'converted'))
  del paths
  check_parity('convnext_base_w_320', model, out, 96, record_property)


def test_bfloat16_compute_keeps_float32_params(tiny_clip_dir):
  _, params = convert.load_clip_checkpoint(tiny_clip_dir)
  images = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
  out = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    visual = clip_convnext.CLIPVisual('test_tiny', dtype=dtype)
    out[dtype] = jax.jit(visual.apply)({'params': params['visual']}, images)
    init = jax.eval_shape(visual.init, jax.random.PRNGKey(0), images)
    assert {x.dtype for x in jax.tree.leaves(init)} == {jnp.dtype(jnp.float32)}
  assert out[jnp.bfloat16]['res5'].dtype == jnp.bfloat16
  assert rel_err(out[jnp.bfloat16]['res5'].astype(jnp.float32), out[jnp.float32]['res5']) < 0.05
