"""Multi-scale deformable attention vs the pure-PyTorch reference (torch grid_sample).

The reference is transformers' ``multi_scale_deformable_attention`` (a port of Mask2Former's
``ms_deform_attn_core_pytorch``); the module is checked against transformers'
``Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention`` with the same weights.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.mask2former import modeling_mask2former as hf

from ovsnet_jax.models import ms_deform_attn as mda



@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  """fp32 parity: no TF32/bf16 passes on accelerators (CPU computes fp32 matmuls exactly anyway)."""
  with jax.default_matmul_precision('highest'):
    yield

SHAPES = ((6, 5), (3, 4), (2, 2))  # (h, w) per level, deliberately non-square
B, LQ, M, DH, P = 2, 7, 2, 4, 3
IMPLS = mda.DEFORM_IMPLS


def _inputs(seed, special=True):
  """Random inputs; locations in [-0.3, 1.3] plus (special) exact borders, centres and far-away
  points, where the derivative in the location is one-sided and left out of the gradient test."""
  rng = np.random.default_rng(seed)
  s = sum(h * w for h, w in SHAPES)
  value = rng.normal(size=(B, s, M, DH)).astype(np.float32)
  loc = rng.uniform(-0.3, 1.3, size=(B, LQ, M, len(SHAPES), P, 2)).astype(np.float32)
  if not special:
    return value, loc, _softmax(rng, loc.shape[:-1])
  loc[0, 0, 0, :, 0] = (0.0, 0.0)  # top-left border: only one corner in range
  loc[0, 0, 0, :, 1] = (1.0, 1.0)  # bottom-right border
  loc[0, 0, 1, :, 0] = (-5.0, 7.0)  # far outside: reads zero
  loc[0, 1, 0, 0, :] = [((i + 0.5) / 5, (i + 0.5) / 6) for i in range(P)]  # exact pixel centres
  loc[0, 1, 1, 0, 0] = (-0.1, 0.5)  # left of the first column centre: half the weight
  return value, loc, _softmax(rng, loc.shape[:-1])


def _softmax(rng, shape):
  logits = rng.normal(size=shape[:3] + (shape[3] * shape[4],)).astype(np.float32)
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return weights.reshape(shape)


def _torch_reference(value, loc, weights, requires_grad=False):
  tensors = [torch.tensor(a, dtype=torch.float64, requires_grad=requires_grad) for a in (value, loc, weights)]
  out = hf.multi_scale_deformable_attention(tensors[0], list(SHAPES), tensors[1], tensors[2])
  return out, tensors


@pytest.mark.parametrize('impl', IMPLS)
def test_core_matches_grid_sample(impl):
  value, loc, weights = _inputs(0)
  want, _ = _torch_reference(value, loc, weights)
  got = jax.jit(mda.ms_deform_attn_core, static_argnums=(1, 4))(value, SHAPES, loc, weights, impl)
  assert got.shape == (B, LQ, M * DH)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize('impl', IMPLS)
def test_core_gradients_match_grid_sample(impl):
  value, loc, weights = _inputs(1, special=False)
  cot = np.random.default_rng(2).normal(size=(B, LQ, M * DH))
  out, tensors = _torch_reference(value, loc, weights, requires_grad=True)
  (out * torch.tensor(cot)).sum().backward()
  loss = lambda v, l, w: jnp.sum(mda.ms_deform_attn_core(v, SHAPES, l, w, impl) * cot)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(value, loc, weights)
  for got, t in zip(grads, tensors):
    np.testing.assert_allclose(np.asarray(got), t.grad.numpy(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize('impl', ['window', 'gather'])
def test_query_chunks_with_remat_match_grid_sample(impl):
  # 7 queries in chunks of 3: the last chunk is padded; values and gradients as without chunks.
  value, loc, weights = _inputs(5, special=False)
  cot = np.random.default_rng(6).normal(size=(B, LQ, M * DH))
  out, tensors = _torch_reference(value, loc, weights, requires_grad=True)
  (out * torch.tensor(cot)).sum().backward()
  core = lambda v, l, w: mda.ms_deform_attn_core(v, SHAPES, l, w, impl, query_chunk=3, remat=True)
  got = jax.jit(core)(value, loc, weights)
  np.testing.assert_allclose(np.asarray(got), out.detach().numpy(), atol=1e-6, rtol=0)
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(core(*a) * cot), argnums=(0, 1, 2)))(value, loc, weights)
  for g, t in zip(grads, tensors):
    np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), atol=1e-4, rtol=1e-5)


def test_core_hand_computed():
  # One 2x2 level, one head: a point between all four pixel centres averages them; the top-left
  # border point (0, 0) sits at pixel coordinate (-0.5, -0.5) and reads a quarter of pixel (0, 0).
  value = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1)
  loc = jnp.array([[0.5, 0.5], [0.0, 0.0], [0.75, 0.25]]).reshape(1, 3, 1, 1, 1, 2)
  weights = jnp.ones((1, 3, 1, 1, 1))
  for impl in IMPLS:
    out = mda.ms_deform_attn_core(value, ((2, 2),), loc, weights, impl)
    np.testing.assert_allclose(np.asarray(out).ravel(), [2.5, 0.25, 2.0], atol=1e-6)


def test_core_rejects_bad_input():
  value, loc, weights = _inputs(0)
  with pytest.raises(ValueError,
                     match=r'spatial_shapes \(\(6, 5\), \(3, 4\)\) cover 42 positions but value has S=46'):
    mda.ms_deform_attn_core(value, SHAPES[:2], loc[:, :, :, :2], weights[:, :, :, :2])
  with pytest.raises(ValueError,
                     match="deform_impl: expected one of \\('window', 'gather', 'gather_corners', 'onehot'\\), got 'cuda'"):
    mda.ms_deform_attn_core(value, SHAPES, loc, weights, 'cuda')
  with pytest.raises(ValueError, match=r'deform_query_chunk: expected >= 0 \(0 = no chunking\), got -1'):
    mda.ms_deform_attn_core(value, SHAPES, loc, weights, 'window', query_chunk=-1)
  with pytest.raises(ValueError, match=r'attention_weights must be \(2, 7, 2, 3, 3\)'):
    mda.ms_deform_attn_core(value, SHAPES, loc, weights[..., :2])


def test_init_matches_mask2former():
  module = mda.MSDeformAttn(d_model=16, num_levels=3, num_heads=8, num_points=4)
  s = sum(h * w for h, w in SHAPES)
  init = jax.jit(module.init, static_argnums=4)
  params = init(jax.random.PRNGKey(0), jnp.zeros((1, s, 16)), jnp.zeros((1, s, 3, 2)), jnp.zeros((1, s, 16)),
                SHAPES)['params']
  bias = np.asarray(params['sampling_offsets']['bias']).reshape(8, 3, 4, 2)
  # Head 1 points at 45 degrees: (cos, sin) / max -> (1, 1); head 2 straight down: (0, 1).
  np.testing.assert_allclose(bias[1, 2, :, :], [[1, 1], [2, 2], [3, 3], [4, 4]], atol=1e-6)
  np.testing.assert_allclose(bias[2, 0, 1], [0, 2], atol=1e-6)
  np.testing.assert_allclose(bias[4, 1, 0], [-1, 0], atol=1e-6)
  assert not np.any(np.asarray(params['sampling_offsets']['kernel']))
  assert not np.any(np.asarray(params['attention_weights']['kernel']))
  bound = math.sqrt(6 / 32)  # xavier_uniform of a 16x16 kernel
  kernel = np.asarray(params['value_proj']['kernel'])
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.8 * bound


@pytest.mark.parametrize('impl', IMPLS)
def test_module_matches_transformers(impl):
  c, heads, num_points = 16, 4, 4
  torch.manual_seed(0)
  ref = hf.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(c, heads, len(SHAPES), num_points).double()
  with torch.no_grad():
    for p in ref.parameters():
      p.normal_(0.0, 0.3)  # large random offsets: many samples fall outside the maps
  s = sum(h * w for h, w in SHAPES)
  rng = np.random.default_rng(3)
  query, value_in = rng.normal(size=(2, B, s, c)).astype(np.float32)
  ref_points = rng.uniform(0, 1, size=(B, s, len(SHAPES), 2)).astype(np.float32)
  with torch.no_grad():
    f64 = lambda x: torch.tensor(x, dtype=torch.float64)
    want, _ = ref(f64(query), encoder_hidden_states=f64(value_in), reference_points=f64(ref_points),
                  spatial_shapes_list=list(SHAPES))
  dense = lambda lin: {'kernel': lin.weight.detach().numpy().T, 'bias': lin.bias.detach().numpy()}
  params = {name: dense(getattr(ref, name))
            for name in ('value_proj', 'sampling_offsets', 'attention_weights', 'output_proj')}
  module = mda.MSDeformAttn(d_model=c, num_levels=len(SHAPES), num_heads=heads, num_points=num_points, impl=impl)
  got = jax.jit(lambda p, *a: module.apply({'params': p}, *a, SHAPES))(params, query, ref_points, value_in)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-5, rtol=0)


def test_benchmark_reports_every_impl_and_skips_oversized():
  from ovsnet_jax.benchmarks import deform
  figures = deform.run(['--batch=1', '--levels=2,12', '--heads=2', '--head_dim=4', '--points=2', '--iters=1',
                        '--impls=gather,onehot', '--max_gib=0.0001'])
  # 148 queries x 2 heads x 4 B, times 2 levels x 2 points x 4 corners x 4 (gather) or 12 x 12 (onehot).
  assert figures['gather_largest_intermediate_gib'] == float(f'{148 * 2 * 4 * 64 / 2 ** 30:.4g}')
  assert figures['gather_fwd_ms'] > 0 and figures['gather_fwd_bwd_ms'] > 0
  assert figures['onehot_skipped'] == 'largest intermediate ~0.0001588 GiB > --max_gib=0.0001'
  assert 'onehot_fwd_ms' not in figures


def test_remat_same_gradients_smaller_residuals():
  s = sum(h * w for h, w in SHAPES)
  rng = np.random.default_rng(4)
  query, value_in = rng.normal(size=(2, B, s, 16)).astype(np.float32)
  ref_points = rng.uniform(0, 1, size=(B, s, len(SHAPES), 2)).astype(np.float32)
  plain = mda.MSDeformAttn(d_model=16, num_heads=4, num_points=4)
  remat = mda.MSDeformAttn(d_model=16, num_heads=4, num_points=4, remat=True)
  params = jax.jit(plain.init, static_argnums=4)(jax.random.PRNGKey(0), query, ref_points, value_in, SHAPES)
  residual_bytes, grads = [], []
  for module in (plain, remat):
    fn = lambda p, v, module=module: module.apply(p, query, ref_points, v, SHAPES)
    out, vjp = jax.jit(lambda p, v, fn=fn: jax.vjp(fn, p, v))(params, value_in)
    residual_bytes.append(sum(x.nbytes for x in jax.tree.leaves(vjp)))  # what the backward keeps
    grads.append(vjp(jnp.ones_like(out)))
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6)  # float32 reordering
  # Without remat the (B, Lq, M, L*P*4, Dh) gathered rows are kept: 2*46*4*48*4 floats at least.
  assert residual_bytes[0] - residual_bytes[1] >= 2 * 46 * 4 * 48 * 4 * 4
