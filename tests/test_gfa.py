"""Gradient-Free Aggregation: closed form vs eq. (1)-(2) iterated (every reading), hand-computed cases,
singular systems, the collapse diagnostics and the warning on embeddings that share a direction."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from ovsnet_jax.models import gfa


def make_cfg(**overrides):
  """The model config's GFA settings with the Q x Q 'query' reading, which the hand-computed cases
  below are about (the default reading, 'per_query', is tested by name where it differs)."""
  cfg = common.get_model_config().gfa
  cfg.update({'affinity': 'query', **overrides})
  return cfg


def unit(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def run_gfa(f_q, f_c, cfg):
  """gfa.gradient_free_aggregation under jit (one compile instead of many eager ops)."""
  return jax.jit(lambda q, c: gfa.gradient_free_aggregation(q, c, cfg))(f_q, f_c)


def numpy_norm(z, norm):
  """Norm(Z) over axis 0 in float64."""
  if norm == 'softmax':
    e = np.exp(z - z.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)
  if norm == 'l1':
    return z / np.abs(z).sum(0, keepdims=True)
  return z


def numpy_iterate(fc0, fq0, lam, omega, norm, steps, walk=False):
  """Eq. (1)-(2) for one image in float64, written from the paper: fc0, fq0 (N, m).

  walk: the random-walk reading, Z in (2) normalised over its F_Q axis (rows) as well.
  """
  z = lam * fc0 @ fq0.T
  nz = numpy_norm(z, norm)
  z2 = numpy_norm(z.T, norm).T if walk else z
  fc = fc0
  for _ in range(steps):
    fq = omega * nz.T @ fc + (1 - omega) * fq0
    fc = omega * z2 @ fq + (1 - omega) * fc0
  return fc, fq


def shared_direction(rng, q, d, c):
  """q unit vectors in R^d whose pairwise cosines are about c (all lean on one direction), (1, q, d)."""
  noise = unit(rng, (1, q, d))
  x = np.sqrt(c) * np.ones(d) / np.sqrt(d) + np.sqrt(1 - c) * noise
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_single_query_hand_computed():
  # Q = 1, f_c = f_q = e: Z = lam, Norm(Z) = 1, A = lam; F_C = (1-w)(w lam + 1) / (1 - w^2 lam) e.
  e = jnp.zeros((1, 1, 4)).at[..., 0].set(1.0)
  fused, aux = run_gfa(e, e, make_cfg(lam=0.2, omega=0.5))
  np.testing.assert_allclose(np.asarray(fused[0, 0]), [0.5 * 1.1 / 0.95, 0, 0, 0], rtol=1e-6)
  # F_Q^inf = w * F_C^inf + (1 - w) e.
  np.testing.assert_allclose(float(aux['fused_query'][0, 0, 0]), 0.5 * 0.5 * 1.1 / 0.95 + 0.5, rtol=1e-6)
  assert int(aux['num_singular']) == 0


def test_two_orthogonal_queries_hand_computed():
  # f_c = f_q = [e1, e2]: Z = lam I, Norm(Z) = [[s, 1-s], [1-s, s]], s = e^lam / (e^lam + 1).
  lam, w = 0.2, 0.5
  s = np.exp(lam) / (np.exp(lam) + 1)
  n = np.array([[s, 1 - s], [1 - s, s]])
  m = np.eye(2) - w ** 2 * lam * n
  # rhs = w lam I + I per column; (1-w) M^{-1} rhs with the 2x2 inverse written out.
  inv = np.array([[m[1, 1], -m[0, 1]], [-m[1, 0], m[0, 0]]]) / (m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])
  expected = (1 - w) * (1 + w * lam) * inv
  f = jnp.eye(2)[None]  # (1, 2, 2)
  fused, _ = run_gfa(f, f, make_cfg(lam=lam, omega=w))
  np.testing.assert_allclose(np.asarray(fused[0]), expected, rtol=1e-6)


@pytest.mark.parametrize('norm,affinity', [(n, a) for a in gfa.AFFINITIES for n in gfa.NORMS
                                           if (n, a) != ('none', 'random_walk')])
def test_closed_form_equals_iteration_to_convergence(norm, affinity):
  rng = np.random.default_rng(0)
  fq, fc = unit(rng, (2, 12, 16)), unit(rng, (2, 12, 16))
  cfg = make_cfg(affinity=affinity, norm=norm, lam=0.2, omega=0.5)
  closed, caux = run_gfa(jnp.asarray(fq), jnp.asarray(fc), cfg)
  assert float(caux['spectral_bound'].max()) < 1.0  # rho(w^2 A) < 1: the iteration converges
  cfg.mode, cfg.num_iters = 'iterative', 200
  iterated, iaux = run_gfa(jnp.asarray(fq), jnp.asarray(fc), cfg)
  np.testing.assert_allclose(np.asarray(closed), np.asarray(iterated), atol=2e-6)
  np.testing.assert_allclose(np.asarray(caux['fused_query']), np.asarray(iaux['fused_query']), atol=2e-6)
  # And both equal the float64 paper iteration.
  for b in range(2):
    if affinity in ('query', 'random_walk'):
      ref, _ = numpy_iterate(fc[b], fq[b], 0.2, 0.5, norm, 200, walk=affinity == 'random_walk')
    elif affinity == 'channel':
      ref = np.stack([numpy_iterate(fc[b, i][:, None], fq[b, i][:, None], 0.2, 0.5, norm, 200)[0][:, 0]
                      for i in range(12)])
    else:  # per_query: the same query's vectors only, as (1, D) rows
      ref = np.concatenate([numpy_iterate(fc[b, i][None], fq[b, i][None], 0.2, 0.5, norm, 200)[0]
                            for i in range(12)])
    np.testing.assert_allclose(np.asarray(closed[b]), ref, atol=2e-6)
  assert float(caux['rel_residual'].max()) < 1e-5


def test_iterative_mode_runs_exactly_t_steps():
  rng = np.random.default_rng(1)
  fq, fc = unit(rng, (1, 6, 8)), unit(rng, (1, 6, 8))
  for t in (1, 3):
    got, aux = run_gfa(jnp.asarray(fq), jnp.asarray(fc), make_cfg(mode='iterative', num_iters=t))
    ref_c, ref_q = numpy_iterate(fc[0], fq[0], 0.2, 0.5, 'softmax', t)
    np.testing.assert_allclose(np.asarray(got[0]), ref_c, atol=1e-6)
    np.testing.assert_allclose(np.asarray(aux['fused_query'][0]), ref_q, atol=1e-6)


def test_channel_rank_one_solve_equals_dense_solve():
  rng = np.random.default_rng(2)
  fq, fc = unit(rng, (1, 3, 10)), unit(rng, (1, 3, 10))
  lam, w = 0.7, 0.6
  got, _ = run_gfa(jnp.asarray(fq), jnp.asarray(fc), make_cfg(affinity='channel', lam=lam, omega=w))
  for i in range(3):
    z = lam * np.outer(fc[0, i], fq[0, i])
    e = np.exp(z - z.max(0))
    a = z @ (e / e.sum(0)).T
    ref = (1 - w) * np.linalg.solve(np.eye(10) - w ** 2 * a, w * z @ fq[0, i] + fc[0, i])
    np.testing.assert_allclose(np.asarray(got[0, i]), ref, atol=1e-6)
    # Degenerate reading: F_C^inf is parallel to F_C^0.
    np.testing.assert_allclose(abs(ref @ fc[0, i]) / np.linalg.norm(ref), 1.0, atol=1e-9)


def test_divergent_but_nonsingular_is_the_unique_solution():
  # Q = 1, lam = 8, w = 0.5: w^2 A = 2 > 1. Solve gives (1-w)(w lam + 1)/(1 - 2) e = -2.5 e; iteration diverges.
  e = jnp.zeros((1, 1, 4)).at[..., 0].set(1.0)
  cfg = make_cfg(lam=8.0, omega=0.5)
  fused, aux = run_gfa(e, e, cfg)
  np.testing.assert_allclose(np.asarray(fused[0, 0]), [-2.5, 0, 0, 0], rtol=1e-6)
  assert float(aux['spectral_bound'][0]) == pytest.approx(2.0) and int(aux['num_singular']) == 0
  cfg.mode, cfg.num_iters = 'iterative', 30
  iterated, _ = run_gfa(e, e, cfg)
  assert float(iterated[0, 0, 0]) > 1e8


@pytest.mark.parametrize('on_singular', ['fallback', 'regularize'])
def test_singular_query_system_is_flagged_and_finite(on_singular):
  # Image 0: 4 identical queries e, lam = 1, w = 0.5: A = 1 1^T, I - w^2 A has eigenvalue 1 - 4/4 = 0.
  rng = np.random.default_rng(3)
  e = np.zeros((4, 8))
  e[:, 0] = 1.0
  other = unit(rng, (4, 8))
  fq = jnp.asarray(np.stack([e, other]), jnp.float32)
  cfg = make_cfg(lam=1.0, omega=0.5, on_singular=on_singular)
  fused, aux = run_gfa(fq, fq, cfg)
  assert np.asarray(aux['singular']).tolist() == [True, False]
  assert int(aux['num_singular']) == 1 and np.isinf(float(aux['condition'][0]))
  assert np.isfinite(np.asarray(fused)).all()
  if on_singular == 'fallback':
    np.testing.assert_array_equal(np.asarray(fused[0]), e)  # F_C^0
  unflagged, _ = run_gfa(fq[1:], fq[1:], cfg)
  np.testing.assert_allclose(np.asarray(fused[1]), np.asarray(unflagged[0]), atol=1e-6)
  grads = jax.jit(jax.grad(lambda q: gfa.gradient_free_aggregation(q, fq, cfg)[0].sum()))(fq)
  assert np.isfinite(np.asarray(grads)).all()


def test_singular_channel_system_is_flagged_and_finite():
  # norm none: A = lam^2 |f_q|^2 f_c f_c^T, eigenvalue 1 - w^2 lam^2 |f_q|^2 |f_c|^2 of I - w^2 A.
  # lam = 2, w = 0.5, unnormalised: query 0 has |f_c| = |f_q| = 1 (singular), query 1 |f_c| = 0.5.
  f = jnp.zeros((1, 2, 6)).at[:, 0, 0].set(1.0).at[:, 1, 1:3].set(0.5 ** 1.5)
  fq = f.at[:, 1].set(jnp.zeros(6).at[3].set(1.0))
  cfg = make_cfg(affinity='channel', norm='none', lam=2.0, omega=0.5, l2_normalize=False)
  fused, aux = run_gfa(fq, f, cfg)
  assert np.asarray(aux['singular']).tolist() == [[True, False]]
  np.testing.assert_array_equal(np.asarray(fused[0, 0]), np.asarray(f[0, 0]))
  assert np.isfinite(np.asarray(fused)).all()


def test_dtype_gradients_and_stop_gradient():
  rng = np.random.default_rng(4)
  fq = jnp.asarray(unit(rng, (2, 5, 8)), jnp.bfloat16)
  fc = jnp.asarray(unit(rng, (2, 5, 8)), jnp.bfloat16)
  fused, _ = run_gfa(fq, fc, make_cfg())
  assert fused.dtype == jnp.float32 and fused.shape == (2, 5, 8)
  loss = lambda cfg: jax.jit(lambda q: (gfa.gradient_free_aggregation(q, fc, cfg)[0] ** 2).sum())
  assert float(jnp.abs(jax.grad(loss(make_cfg()))(fq.astype(jnp.float32))).max()) > 0
  assert float(jnp.abs(jax.grad(loss(make_cfg(stop_gradient=True)))(fq.astype(jnp.float32))).max()) == 0


def test_bad_config_and_shapes_raise():
  x = jnp.ones((1, 2, 4))
  with pytest.raises(ValueError, match=r"model.gfa.norm: expected one of \('softmax', 'l1', 'none'\), got 'l2'"):
    gfa.gradient_free_aggregation(x, x, make_cfg(norm='l2'))
  with pytest.raises(ValueError, match=r'model.gfa.omega: expected a value in \(0, 1\), got 1.0'):
    gfa.gradient_free_aggregation(x, x, make_cfg(omega=1.0))
  with pytest.raises(ValueError, match=r'gfa: expected f_q and f_c of one shape \(B, Q, D\)'):
    gfa.gradient_free_aggregation(x, jnp.ones((1, 3, 4)), make_cfg())


@pytest.mark.parametrize('affinity', ['query', 'channel'])
def test_zero_clip_feature_classifies_the_query_with_finite_gradients(affinity):
  # An empty mask through a zero-bias CLIP head gives F_C^0 = 0: F_C^inf would be 0 (NaN cosine gradient).
  rng = np.random.default_rng(5)
  fq = jnp.asarray(rng.normal(size=(1, 4, 8)), jnp.float32)
  fc = jnp.asarray(rng.normal(size=(1, 4, 8)), jnp.float32).at[0, 2].set(0.0)
  cfg = make_cfg(affinity=affinity)
  fused, _ = run_gfa(fq, fc, cfg)
  np.testing.assert_allclose(np.asarray(fused[0, 2]), np.asarray(fq[0, 2] / jnp.linalg.norm(fq[0, 2])), rtol=1e-6)

  def cos_loss(q):
    f = gfa.gradient_free_aggregation(q, fc, cfg)[0]
    return (f / jnp.linalg.norm(f, axis=-1, keepdims=True)).sum()

  grads = jax.jit(jax.grad(cos_loss))(fq)
  assert np.isfinite(np.asarray(grads)).all() and float(jnp.abs(grads[0, 2]).max()) > 0


@pytest.mark.parametrize('norm', ['softmax', 'l1', 'none'])
def test_per_query_reading_is_a_weighted_sum_of_the_query_own_embeddings(norm):
  # Scalar Z = lam <f_c, f_q>; Norm(Z) = 1 (softmax), sign(Z) (l1), Z (none).
  # F_C^inf = (1 - w)(w Z f_q + f_c) / (1 - w^2 Z Norm(Z)).
  rng = np.random.default_rng(6)
  fq, fc = unit(rng, (2, 5, 8)), unit(rng, (2, 5, 8))
  lam, w = 0.7, 0.6
  fused, aux = run_gfa(jnp.asarray(fq), jnp.asarray(fc), make_cfg(affinity='per_query', norm=norm, lam=lam, omega=w))
  z = lam * (fc * fq).sum(-1, keepdims=True)
  n = {'softmax': np.ones_like(z), 'l1': np.sign(z), 'none': z}[norm]
  expected = (1 - w) * (w * z * fq + fc) / (1 - w ** 2 * z * n)
  np.testing.assert_allclose(np.asarray(fused), expected, atol=1e-6)
  np.testing.assert_allclose(np.asarray(aux['spectral_bound']), w ** 2 * np.abs(z * n)[..., 0], rtol=1e-5)
  assert aux['condition'].shape == (2, 5)


def test_random_walk_converges_where_the_query_reading_diverges():
  # lam = 4, w = 0.9, 40 queries leaning on one direction: the query reading's w^2 A is far past 1.
  rng = np.random.default_rng(7)
  fq, fc = (jnp.asarray(shared_direction(rng, 40, 32, 0.3), jnp.float32) for _ in range(2))
  _, qaux = run_gfa(fq, fc, make_cfg(lam=4.0, omega=0.9))
  assert float(qaux['spectral_bound'][0]) > 5
  for norm in ('softmax',):  # l1: test_closed_form_equals_iteration_to_convergence
    cfg = make_cfg(affinity='random_walk', norm=norm, lam=4.0, omega=0.9)
    closed, aux = run_gfa(fq, fc, cfg)
    assert float(aux['spectral_bound'][0]) <= 0.81 + 1e-5  # ||w^2 A||_inf <= w^2
    ref, _ = numpy_iterate(np.asarray(fc[0], np.float64), np.asarray(fq[0], np.float64), 4.0, 0.9, norm, 400,
                           walk=True)
    np.testing.assert_allclose(np.asarray(closed[0]), ref, atol=1e-5)


def test_collapse_diagnostics_hand_computed():
  e = np.eye(3, 4)[None]  # (1, 3, 4) orthonormal F_C^0
  same = gfa.collapse_diagnostics(jnp.asarray(e), jnp.asarray(e))
  assert float(same['fused_cosine'][0]) == pytest.approx(0.0, abs=1e-7)
  assert float(same['own_nearest'][0]) == 1.0
  collapsed = gfa.collapse_diagnostics(jnp.asarray(e), jnp.asarray(np.repeat(e[:, :1], 3, axis=1)))
  assert float(collapsed['fused_cosine'][0]) == pytest.approx(1.0)
  assert float(collapsed['own_nearest'][0]) == pytest.approx(1 / 3)  # all nearest e1: only query 0
  assert float(collapsed['input_cosine'][0]) == pytest.approx(0.0, abs=1e-7)


def summarize(aux):
  """gfa.summary_metrics of one call's diagnostics, as the model hands them over (one prediction)."""
  return gfa.summary_metrics({k: v if k == 'num_singular' else v[None] for k, v in aux.items()
                              if k not in ('fused_clip', 'fused_query')})


def test_query_reading_collapses_and_warns_where_per_query_random_walk_and_the_default_do_not():
  # Issue 13's row Q = 100, mean cosine 0.2: the query reading's bound passes 1 and every F_C^inf
  # lands on one direction; the other two readings keep each query nearest its own F_C^0.
  rng = np.random.default_rng(8)
  fq, fc = (jnp.asarray(shared_direction(rng, 100, 256, 0.2), jnp.float32) for _ in range(2))
  _, aux = run_gfa(fq, fc, make_cfg())
  metrics = summarize(aux)
  assert float(metrics['gfa/spectral_bound']) > 1 and float(metrics['gfa/fused_cosine']) > 0.95
  assert float(metrics['gfa/own_nearest']) < 0.1
  assert float(metrics['gfa/input_cosine']) == pytest.approx(0.2, abs=0.03)
  warning = gfa.health_warning(metrics)
  assert 'spectral bound' in warning and 'collapsed' in warning
  default = common.get_model_config().gfa  # the configs' reading, unmodified
  for name, cfg in (('per_query', make_cfg(affinity='per_query')), ('random_walk', make_cfg(affinity='random_walk')),
                    ('default', default)):
    _, aux = run_gfa(fq, fc, cfg)
    metrics = summarize(aux)
    assert float(metrics['gfa/own_nearest']) == 1.0, name
    assert float(metrics['gfa/spectral_bound']) < 0.3, name
    assert gfa.health_warning(metrics) is None, name


def test_random_walk_needs_a_normalised_transition():
  x = jnp.ones((1, 2, 4))
  with pytest.raises(ValueError, match="model.gfa.norm: affinity 'random_walk' needs normalised transitions"):
    gfa.gradient_free_aggregation(x, x, make_cfg(affinity='random_walk', norm='none'))
