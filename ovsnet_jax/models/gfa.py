"""Gradient-Free Aggregation (GFA), OVSNet eq. (1)-(4): parameter-free fusion of F_Q and F_C.

With F_C^0 the mask-pooled CLIP features and F_Q^0 the query embeddings (both in CLIP space)::

  Z     = lam * F_C^0 (F_Q^0)^T                                   # affinity
  F_Q^t = omega * Norm(Z)^T F_C^{t-1} + (1 - omega) F_Q^0          # (1)
  F_C^t = omega * Z F_Q^t + (1 - omega) F_C^0                      # (2)
  F_C^inf = (1 - omega) (I - omega^2 A)^{-1} (omega Z F_Q^0 + F_C^0),  A = Z Norm(Z)^T   # (4)

Readings (``cfg.affinity``):
  * ``query``: per image, rows are the Q queries, Z is (Q, Q) and (4) is one Q x Q solve per image
    (LU in float32, as ``jnp.linalg.solve``). Z is un-normalised in (2), so rho(w^2 A) grows with Q
    and with the mean cosine of the embeddings: past 1 the iteration diverges, and around there every
    F_C^inf collapses onto one direction (issue 13: Q=100, mean cosine 0.2 leaves 1% of the queries
    nearest their own F_C^0). Watch ``spectral_bound`` and the collapse diagnostics below.
  * ``per_query``: the paper's "we omit the query index" read literally: each query is its own
    system, Z = lam <f_c, f_q> is a scalar (softmax Norm(Z) = 1, l1 sign(Z)), and
    F_C^inf = (1 - w)(w Z f_q + f_c) / (1 - w^2 Z Norm(Z)), a weighted sum of that query's F_C^0 and
    F_Q^0: no query sees another, so nothing can collapse; with l2_normalize |w^2 A| <= w^2 lam.
    Computed as the ``query`` reading with Q = 1 per system.
  * ``random_walk``: the ``query`` reading with both transitions normalised: Norm(Z)^T in (1) and
    Norm(Z^T)^T (Z normalised over its F_Q axis, row-stochastic) in place of Z in (2). Then A is
    row-stochastic (softmax) or has unit row L1 norms (l1), ||w^2 A||_inf <= w^2 < 1 for every
    omega, the iteration always converges, cond_inf(I - w^2 A) <= (1 + w^2) / (1 - w^2) (the
    reported ``condition`` is cond_1), and with
    softmax F_C^inf is a convex combination of the F_C^0 and F_Q^0 in which the query's own F_C^0
    weighs at least 1 - omega. Needs norm 'softmax' or 'l1'.
  * ``channel``: per query, F_C, F_Q are D-vectors (columns) and Z = lam f_c f_q^T is (D, D).
    Then A = u v^T with u = lam f_c and v = Norm(Z) f_q is rank one, so (4) is solved exactly
    with the Sherman-Morrison identity (O(D^2), no D x D factorisation). Note: in this reading the
    right-hand side and u are both parallel to f_c, so F_C^t and F_C^inf are scalar multiples of
    F_C^0 and classifying ``fused_clip`` by cosine equals classifying F_C^0 (up to sign).

Norm (``cfg.norm``) acts over the CLIP-feature axis (Z's first axis), so Norm(Z)^T is a transition
matrix: ``softmax`` (row-stochastic), ``l1`` (rows of Norm(Z)^T divided by their L1 norm),
``none``.

Convergence and singular systems: the iteration converges iff rho(omega^2 A) < 1, and then to the
closed form. Where rho >= 1 but I - omega^2 A is non-singular, the closed form is still the unique
solution of (I - omega^2 A) F = (1 - omega) rhs (the fixed point of (1)-(2)) while the iteration
diverges; ``spectral_bound`` = omega^2 ||A||_inf (>= rho) is reported. A system whose 1-norm
condition number exceeds ``cfg.max_condition`` (or is singular) is flagged, counted in
``num_singular`` (the training loop warns), and handled by ``cfg.on_singular``: ``fallback`` returns F_C^0 and
F_Q^0 for that image (query reading) / query (channel reading); ``regularize`` solves the
Tikhonov system (M^T M + 1e-6 I) F = M^T rhs instead. Never NaN on finite input.

Collapse diagnostics (every reading, per system, no host callback): ``fused_cosine`` the mean
pairwise cosine of F_C^inf over an image's queries, ``input_cosine`` the same for F_C^0, and
``own_nearest`` the fraction of queries whose F_C^inf is nearest (cosine) their own F_C^0.
``summary_metrics`` turns them into scalars for the training log; ``health_warning`` says when
the bound passes 1 or the fused embeddings collapse.

Zero CLIP features: a query whose F_C^0 is exactly zero (an empty mask pooled through a CLIP head
with zero LayerNorm bias, as in randomly initialised CLIPs) has F_C^inf = 0, whose cosine with the
text has a NaN gradient; its F_C^inf is replaced by F_Q^0 (the query classifies its own
embedding, as FC-CLIP's in-vocabulary head does).
"""
import jax
import jax.numpy as jnp

from ovsnet_jax.models import layers

HIGHEST = jax.lax.Precision.HIGHEST
NORMS = ('softmax', 'l1', 'none')
AFFINITIES = ('query', 'channel', 'per_query', 'random_walk')
CLASSIFY = ('fused_clip', 'fused_query', 'average')
TIKHONOV = 1e-6
COLLAPSE_COSINE = 0.95  # fused embeddings this alike (mean pairwise cosine) ...
COLLAPSE_GAIN = 0.05  # ... and this much more alike than F_C^0: collapsed by GFA


def _mm(a, b):
  return jnp.matmul(a, b, precision=HIGHEST)


def _t(x):
  return jnp.swapaxes(x, -1, -2)


_l2n = layers.l2_normalize


def normalize_affinity(z: jax.Array, norm: str) -> jax.Array:
  """Norm(Z), normalised over Z's first (CLIP-feature) axis: z (..., N, N) -> (..., N, N)."""
  if norm == 'softmax':
    return jax.nn.softmax(z, axis=-2)
  if norm == 'l1':
    return z / (jnp.abs(z).sum(axis=-2, keepdims=True) + 1e-12)
  if norm == 'none':
    return z
  raise ValueError(f'model.gfa.norm: expected one of {NORMS}, got {norm!r}')


def check_config(cfg) -> None:
  """Raises ValueError naming the ``model.gfa`` field that is out of range."""
  if cfg.affinity not in AFFINITIES:
    raise ValueError(f'model.gfa.affinity: expected one of {AFFINITIES}, got {cfg.affinity!r}')
  if cfg.norm not in NORMS:
    raise ValueError(f'model.gfa.norm: expected one of {NORMS}, got {cfg.norm!r}')
  if cfg.affinity == 'random_walk' and cfg.norm == 'none':
    raise ValueError("model.gfa.norm: affinity 'random_walk' needs normalised transitions, expected 'softmax' "
                     "or 'l1', got 'none'")
  if not 0.0 < cfg.omega < 1.0:
    raise ValueError(f'model.gfa.omega: expected a value in (0, 1), got {cfg.omega}')
  if cfg.mode not in ('closed_form', 'iterative'):
    raise ValueError(f"model.gfa.mode: expected 'closed_form' or 'iterative', got {cfg.mode!r}")
  if cfg.classify not in CLASSIFY:
    raise ValueError(f'model.gfa.classify: expected one of {CLASSIFY}, got {cfg.classify!r}')
  if cfg.get('on_singular', 'fallback') not in ('fallback', 'regularize'):
    raise ValueError(f"model.gfa.on_singular: expected 'fallback' or 'regularize', got {cfg.on_singular!r}")


def affinity_terms(fc0, fq0, lam, norm, detach=False, walk=False):
  """The transitions of (2) and (1) for column-stacked systems: fc0, fq0 (..., N, m) -> two (..., N, N).

  (Z, Norm(Z)^T); with ``walk`` (random-walk reading) Z in (2) is normalised over its F_Q axis too.
  """
  if detach:
    fc0, fq0 = jax.lax.stop_gradient(fc0), jax.lax.stop_gradient(fq0)
  z = lam * _mm(fc0, _t(fq0))  # (..., N, N)
  zr = _t(normalize_affinity(_t(z), norm)) if walk else z  # rows sum to 1 (softmax) with walk
  return zr, _t(normalize_affinity(z, norm))


def spectral_bound(z, nt, omega):
  """w^2 ||Z Norm(Z)^T||_inf >= rho(w^2 A), per system: (..., N, N) -> (...)."""
  return jax.lax.stop_gradient(omega ** 2 * jnp.abs(_mm(z, nt)).sum(-1).max(-1))


def collapse_diagnostics(fc0, fc):
  """Per image: fused_cosine, input_cosine (mean pairwise cosines of F_C^inf, F_C^0) and own_nearest
  (fraction of queries whose F_C^inf is nearest their own F_C^0): fc0, fc (B, Q, D) -> three (B,)."""
  fc0, fc = _l2n(jax.lax.stop_gradient(fc0)), _l2n(jax.lax.stop_gradient(fc))
  q = fc.shape[-2]
  eye = jnp.eye(q, dtype=bool)

  def mean_offdiag(g):  # (B, Q, Q) -> (B,)
    return jnp.where(eye, 0.0, g).sum((-2, -1)) / max(q * (q - 1), 1)

  cross = _mm(fc, _t(fc0))  # (B, Q, Q) cos(F_C^inf_i, F_C^0_j)
  own = jnp.argmax(cross, axis=-1) == jnp.arange(q)  # (B, Q)
  return dict(fused_cosine=mean_offdiag(_mm(fc, _t(fc))), input_cosine=mean_offdiag(_mm(fc0, _t(fc0))),
              own_nearest=own.mean(-1).astype(jnp.float32))


def summary_metrics(diag: dict) -> dict:
  """Scalars for the training log from ``out['gfa']`` ((L, B[, Q]) arrays; L = predictions fused).

  The classified (last) prediction: max ``spectral_bound``, max finite ``condition``, max
  ``residual``, mean ``fused_cosine``, ``input_cosine``, ``own_nearest``; ``num_singular`` over all.
  """
  last = {k: v[-1] for k, v in diag.items() if k != 'num_singular'}
  cond = last['condition']
  return {'gfa/spectral_bound': last['spectral_bound'].max(),
          'gfa/condition': jnp.where(jnp.isfinite(cond), cond, 0.0).max(),
          'gfa/residual': last['rel_residual'].max(),
          'gfa/fused_cosine': last['fused_cosine'].mean(), 'gfa/input_cosine': last['input_cosine'].mean(),
          'gfa/own_nearest': last['own_nearest'].mean(),
          'gfa/num_singular': diag['num_singular'].astype(jnp.float32)}


def health_warning(metrics: dict, warn_singular: bool = True) -> str | None:
  """A loud message when the logged ``summary_metrics`` show divergence, collapse or singular systems."""
  if 'gfa/spectral_bound' not in metrics:
    return None
  m = {k: float(v) for k, v in metrics.items() if k.startswith('gfa/')}
  problems = []
  if m['gfa/spectral_bound'] > 1:
    problems.append(f"spectral bound {m['gfa/spectral_bound']:.3g} > 1: eq. (1)-(2) may diverge and eq. (4) "
                    'is not their limit')
  if m['gfa/fused_cosine'] >= COLLAPSE_COSINE and m['gfa/fused_cosine'] - m['gfa/input_cosine'] >= COLLAPSE_GAIN:
    problems.append(f"fused embeddings collapsed: mean pairwise cosine {m['gfa/fused_cosine']:.3f} (F_C^0: "
                    f"{m['gfa/input_cosine']:.3f}), {m['gfa/own_nearest']:.0%} of queries nearest their own F_C^0")
  if warn_singular and m['gfa/num_singular'] > 0:
    problems.append(f"{m['gfa/num_singular']:.0f} ill-conditioned system(s) (model.gfa.on_singular applies)")
  if not problems:
    return None
  return ('GFA WARNING (shown once): ' + '; '.join(problems) +
          ". Consider model.gfa.affinity='per_query' or 'random_walk' (cannot diverge or collapse).")


def iterate(fc0, fq0, z, nt, omega, num_iters):
  """Eq. (1)-(2) applied ``num_iters`` times from F_C^0: returns (F_C^t, F_Q^t), each (..., N, m)."""
  def step(fc, _):
    fq = omega * _mm(nt, fc) + (1 - omega) * fq0  # (1)
    return omega * _mm(z, fq) + (1 - omega) * fc0, fq  # (2)
  fc, fqs = jax.lax.scan(step, fc0, None, length=num_iters)
  return fc, fqs[-1]


def _solve_query(fc0, fq0, z, nt, omega, max_condition, on_singular):
  """Closed form (4) with dense (N, N) systems: fc0, fq0 (..., N, D); z the transition of (2)."""
  n = z.shape[-1]
  eye = jnp.eye(n, dtype=jnp.float32)
  m = eye - omega ** 2 * _mm(z, nt)  # (..., N, N) = I - w^2 A
  rhs = omega * _mm(z, fq0) + fc0  # (..., N, D)
  m_sg = jax.lax.stop_gradient(m)
  lu = jax.scipy.linalg.lu_factor(m_sg)
  inv = jax.scipy.linalg.lu_solve(lu, jnp.broadcast_to(eye, m.shape))  # (..., N, N)
  norm1 = lambda x: jnp.abs(x).sum(axis=-2).max(axis=-1)  # max column sum
  cond = norm1(m_sg) * norm1(inv)  # (...,) 1-norm condition number
  singular = ~jnp.isfinite(cond) | (cond > max_condition)  # (...,)
  cond = jnp.where(jnp.isfinite(cond), cond, jnp.inf)
  flag = singular[..., None, None]
  if on_singular == 'regularize':
    mt = _t(m)
    sol = jnp.linalg.solve(jnp.where(flag, _mm(mt, m) + TIKHONOV * eye, m), jnp.where(flag, _mm(mt, rhs), rhs))
  else:
    sol = jnp.linalg.solve(jnp.where(flag, eye, m), rhs)  # identity keeps the flagged solve finite
  resid = jnp.linalg.norm(_mm(m, sol) - rhs, axis=(-2, -1)) / (jnp.linalg.norm(rhs, axis=(-2, -1)) + 1e-12)
  fc = (1 - omega) * sol
  return fc, singular, cond, resid, spectral_bound(z, nt, omega)


def _solve_channel(fc0, fq0, z, nt, omega, max_condition, on_singular):
  """Closed form (4) per query, rank one: fc0, fq0 (B, Q, D, 1); A = u v^T."""
  u = _mm(z, fq0) / jnp.maximum(jnp.sum(fq0 * fq0, axis=(-2, -1), keepdims=True), 1e-30)  # lam f_c
  v = _mm(_t(nt), fq0)  # (B, Q, D, 1) Norm(Z) f_q, so that A = u v^T
  vu = jnp.sum(v * u, axis=(-2, -1))  # (B, Q)
  rhs = omega * _mm(z, fq0) + fc0  # (B, Q, D, 1)
  denom = 1 - omega ** 2 * vu  # (B, Q): the only non-unit eigenvalue of I - w^2 A
  uv = omega ** 2 * jnp.linalg.norm(u, axis=(-2, -1)) * jnp.linalg.norm(v, axis=(-2, -1))
  cond = jax.lax.stop_gradient((1 + uv) * (1 + uv / jnp.abs(denom)))  # upper bound on cond_2
  singular = ~jnp.isfinite(cond) | (cond > max_condition)
  cond = jnp.where(jnp.isfinite(cond), cond, jnp.inf)
  safe = jnp.where(singular, 1.0, denom)[..., None, None]
  vr = jnp.sum(v * rhs, axis=(-2, -1), keepdims=True)
  sol = rhs + omega ** 2 * u * vr / safe  # Sherman-Morrison
  if on_singular == 'regularize':
    m = jnp.eye(u.shape[-2]) - omega ** 2 * _mm(u, _t(v))  # only evaluated in this mode
    reg = jnp.linalg.solve(_mm(_t(m), m) + TIKHONOV * jnp.eye(u.shape[-2]), _mm(_t(m), rhs))
    sol = jnp.where(singular[..., None, None], reg, sol)
  mx = sol - omega ** 2 * u * jnp.sum(v * sol, axis=(-2, -1), keepdims=True)
  resid = jnp.linalg.norm(mx - rhs, axis=(-2, -1)) / (jnp.linalg.norm(rhs, axis=(-2, -1)) + 1e-12)
  bound = omega ** 2 * jnp.abs(u).max(axis=(-2, -1)) * jnp.abs(v).sum(axis=(-2, -1))  # (B, Q) ||w^2 u v^T||_inf
  return (1 - omega) * sol, singular, cond, resid, bound


def gradient_free_aggregation(f_q: jax.Array, f_c: jax.Array, cfg) -> tuple[jax.Array, dict]:
  """Fuses query embeddings and pooled CLIP features (eq. 1-4), in float32.

  Args:
    f_q: (B, Q, D) query embeddings F_Q^0 (CLIP space).
    f_c: (B, Q, D) mask-pooled CLIP features F_C^0.
    cfg: ``config.model.gfa`` (affinity, lam, omega, norm, l2_normalize, stop_gradient, mode,
      num_iters, classify; optional detach_affinity, max_condition, on_singular).

  Returns:
    fused (B, Q, D) float32, the embedding named by ``cfg.classify``, and a dict: ``fused_clip``
    F_C^inf and ``fused_query`` F_Q^inf (B, Q, D); ``condition`` the 1-norm condition number of
    I - w^2 A: (B,) for the query and random_walk readings, (B, Q) for per_query, or (B, Q) bound on
    its 2-norm condition (channel reading); ``singular`` bool of the same shape; ``num_singular``
    () int32; ``rel_residual`` and ``spectral_bound`` of the same shape as ``condition`` (condition
    and residual are zeros for ``mode='iterative'``); ``fused_cosine``, ``input_cosine``,
    ``own_nearest`` (B,) (``collapse_diagnostics``).
  """
  check_config(cfg)
  if f_q.shape != f_c.shape or f_q.ndim != 3:
    raise ValueError(f'gfa: expected f_q and f_c of one shape (B, Q, D), got {f_q.shape} and {f_c.shape}')
  lam, omega = float(cfg.lam), float(cfg.omega)
  fq0, fc0 = f_q.astype(jnp.float32), f_c.astype(jnp.float32)
  if cfg.l2_normalize:
    fq0, fc0 = _l2n(fq0), _l2n(fc0)
  fq_in, fc_in = fq0, fc0  # (B, Q, D)
  empty = jnp.all(f_c == 0, axis=-1)[..., None]  # (B, Q, 1) no CLIP feature (see module docstring)
  if cfg.affinity == 'channel':
    fq0, fc0 = fq0[..., None], fc0[..., None]  # (B, Q, D, 1): one D-system per query
  elif cfg.affinity == 'per_query':
    fq0, fc0 = fq0[..., None, :], fc0[..., None, :]  # (B, Q, 1, D): one 1-query system per query
  z, nt = affinity_terms(fc0, fq0, lam, cfg.norm, cfg.get('detach_affinity', False),
                         walk=cfg.affinity == 'random_walk')
  diag_shape = fq0.shape[:-2]  # (B,) or (B, Q)
  if cfg.mode == 'iterative':
    fc, fq = iterate(fc0, fq0, z, nt, omega, int(cfg.num_iters))
    singular = jnp.zeros(diag_shape, bool)
    zeros = jnp.zeros(diag_shape, jnp.float32)
    bound = spectral_bound(z, nt, omega)
    diag = dict(condition=zeros, singular=singular, rel_residual=zeros, spectral_bound=bound)
  else:
    solve = _solve_channel if cfg.affinity == 'channel' else _solve_query
    fc, singular, cond, resid, bound = solve(fc0, fq0, z, nt, omega, float(cfg.get('max_condition', 1e6)),
                                             cfg.get('on_singular', 'fallback'))
    if cfg.get('on_singular', 'fallback') == 'fallback':
      fc = jnp.where(singular.reshape(diag_shape + (1, 1)), fc0, fc)
    fq = omega * _mm(nt, fc) + (1 - omega) * fq0  # F_Q^inf, the fixed point of (1)
    if cfg.get('on_singular', 'fallback') == 'fallback':
      fq = jnp.where(singular.reshape(diag_shape + (1, 1)), fq0, fq)
    diag = dict(condition=cond, singular=singular, rel_residual=jax.lax.stop_gradient(resid),
                spectral_bound=jax.lax.stop_gradient(bound))
  if cfg.affinity == 'channel':
    fc, fq = fc[..., 0], fq[..., 0]
  elif cfg.affinity == 'per_query':
    fc, fq = fc[..., 0, :], fq[..., 0, :]
  diag['num_singular'] = singular.sum().astype(jnp.int32)
  fc = jnp.where(empty, fq_in, fc)
  diag.update(collapse_diagnostics(fc_in, fc))
  fused = {'fused_clip': fc, 'fused_query': fq, 'average': 0.5 * (fc + fq)}[cfg.classify]
  if cfg.stop_gradient:
    fused, fc, fq = (jax.lax.stop_gradient(x) for x in (fused, fc, fq))
  return fused, dict(diag, fused_clip=fc, fused_query=fq)
