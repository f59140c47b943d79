"""Proxy Calibration (OVSNet, eq. (5)-(7)): Beta mixing of matched triplets + cosine losses.

For the Hungarian-matched (query, target) pairs of a batch, with F_Q the query embedding, F_C the
mask-pooled CLIP feature and F_T the text embedding of the matched target's class:
  F'_mn = alpha F_m + (1 - alpha) F_n   for F in {F_Q, F_C, F_T}, alpha ~ Beta(gamma, gamma),   (5)
  L_PQ = 1 - cos(F'_Q, F'_T),   L_PC = 1 - cos(F'_C, F'_T),                                  (6, 7)
both averaged over the matched pairs, the PC loss being L_PQ + L_PC. The partner n of each pair m
comes from a uniformly random permutation of the batch's matched set (mixup-style); padded or
unmatched entries are excluded through weights. [UNVERIFIED] whether alpha is drawn per pair (the
default, `alpha_per_pair=True`) or once per batch.

Which embeddings are F_Q and F_C (`proxy_calibration.query_source` / `clip_source`, SOURCES):
section 4.3 mixes "the aggregated query embeddings", so by default F_Q is the model output
'fused_query' and F_C is 'fused_clip': with GFA F_Q^inf and F_C^inf (eq. (1)-(4)), both carrying
gradient to the decoder through F_Q^0. Without an aggregation (fusion 'none', the "+PC" row of
Table 3) they are F_Q and the raw mask-pooled CLIP feature F_C^0. F_C^0 carries no gradient (the
CLIP is frozen and the masks are binarised and detached before pooling), so there L_PC is logged but
trains nothing and PC reduces to L_PQ. [UNVERIFIED] that this is what the "+PC" row mixes; the
alternative `clip_source='fused_embeds'` would make L_PC an exact copy of L_PQ (the classified
embedding is F_Q itself without fusion), i.e. double L_PQ's weight.

gamma = 1 is the paper's "off" row of Table 4b, but Beta(1, 1) is the uniform distribution on
[0, 1]: the losses are still applied on uniformly mixed proxies. To really disable PC use
`proxy_calibration.enabled = False` in the config (`losses.total_loss` then skips it).
"""
import jax
import jax.numpy as jnp

_EPS = 1e-8
# Model outputs PC can mix (docs: ovsnet.OVSNet.__call__).
SOURCES = ('fused_query', 'fused_clip', 'query_embeds', 'clip_embeds', 'fused_embeds')


def sample_alpha(rng, gamma, shape):
  """alpha ~ Beta(gamma, gamma) of the given shape, float32."""
  return jax.random.beta(rng, gamma, gamma, shape, jnp.float32)


def permute_valid(rng, valid):
  """A uniformly random bijection of the valid entries onto themselves.

  Args:
    rng: PRNG key.
    valid: (N,) bool.

  Returns:
    (N,) int32 perm with valid[perm[i]] == valid[i] for every i.
  """
  n = valid.shape[0]
  idx = jnp.arange(n)
  shuffled = jnp.argsort(jnp.where(valid, jax.random.uniform(rng, (n,)), 2.0))  # valid first
  in_order = jnp.argsort(jnp.where(valid, idx, n + idx))  # valid first, in index order
  return jnp.zeros((n,), jnp.int32).at[in_order].set(shuffled.astype(jnp.int32))


def class_text_embeddings(text, synonyms='mean'):
  """One text embedding per class from the TextClassifier dict.

  Args:
    text: {'embeds': (K, S, D) L2-normalised per synonym, 'valid': (K, S) bool}.
    synonyms: 'mean' (mean of the class's valid synonyms, renormalised) or 'first' (main name).

  Returns:
    (K, D) float32, L2-normalised.
  """
  embeds = text['embeds'].astype(jnp.float32)
  if synonyms == 'first':
    per_class = embeds[:, 0]  # (K, D)
  elif synonyms == 'mean':
    weight = text['valid'].astype(jnp.float32)[..., None]  # (K, S, 1)
    per_class = (embeds * weight).sum(1) / jnp.maximum(weight.sum(1), 1.0)  # (K, D)
  else:
    raise ValueError(f"proxy_calibration.synonyms must be 'mean' or 'first', got {synonyms!r}.")
  return per_class / jnp.maximum(jnp.linalg.norm(per_class, axis=-1, keepdims=True), _EPS)


def gather_matched_triplets(query_embeds, clip_embeds, class_text, classes, indices, valid):
  """(F_Q, F_C, F_T) of every target with its matched query, flattened over the batch.

  Args:
    query_embeds: (B, Q, D) F_Q.
    clip_embeds: (B, Q, D) F_C.
    class_text: (K, D) one text embedding per class.
    classes: (B, M) int32.
    indices: (B, M) int32 matched query per target, -1 if unmatched.
    valid: (B, M) bool.

  Returns:
    f_q, f_c, f_t (B*M, D) and weights (B*M,) float32 (1 for matched valid targets, else 0).
  """
  query = jnp.clip(indices, 0, query_embeds.shape[1] - 1)[..., None]  # (B, M, 1)
  f_q = jnp.take_along_axis(query_embeds, query, axis=1)  # (B, M, D)
  f_c = jnp.take_along_axis(clip_embeds, query, axis=1)  # (B, M, D)
  f_t = class_text[jnp.clip(classes, 0, class_text.shape[0] - 1)]  # (B, M, D)
  weights = ((indices >= 0) & valid).astype(jnp.float32)
  flat = lambda x: x.reshape((-1, x.shape[-1])).astype(jnp.float32)
  return flat(f_q), flat(f_c), flat(f_t), weights.reshape(-1)


def cosine_distance(a, b):
  """1 - cos(a, b) along the last axis: (..., D), (..., D) -> (...)."""
  a = a * jax.lax.rsqrt(jnp.maximum((a * a).sum(-1, keepdims=True), _EPS**2))
  b = b * jax.lax.rsqrt(jnp.maximum((b * b).sum(-1, keepdims=True), _EPS**2))
  return 1.0 - (a * b).sum(-1)


def mixed_cosine_losses(f_q, f_c, f_t, weights, alpha, perm):
  """L_PQ and L_PC for given mixing weights and partners.

  Args:
    f_q, f_c, f_t: (N, D) matched triplets.
    weights: (N,) 1 for real entries, 0 for padding.
    alpha: (N,) or scalar mixing weight of entry m.
    perm: (N,) int32 partner n of entry m.

  Returns:
    (loss_pq, loss_pc) weighted means over the entries.
  """
  f_q, f_c, f_t = (jnp.asarray(f, jnp.float32) for f in (f_q, f_c, f_t))
  weights = jnp.asarray(weights, jnp.float32)
  alpha = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), weights.shape)[:, None]  # (N, 1)
  mix = lambda f: alpha * f + (1.0 - alpha) * f[perm]  # (N, D)
  mq, mc, mt = mix(f_q), mix(f_c), mix(f_t)
  total = jnp.maximum(weights.sum(), 1.0)
  loss_pq = (weights * cosine_distance(mq, mt)).sum() / total
  loss_pc = (weights * cosine_distance(mc, mt)).sum() / total
  return loss_pq, loss_pc


def proxy_calibration_loss(f_q, f_c, f_t, rng, gamma, *, weights=None, alpha_per_pair=True):
  """Proxy Calibration loss L_PQ + L_PC on matched triplets.

  Args:
    f_q: (N, D) query embeddings of matched pairs.
    f_c: (N, D) mask-pooled CLIP features of the same pairs.
    f_t: (N, D) text embeddings of the matched targets' classes.
    rng: PRNG key (alpha and the partner permutation).
    gamma: Beta(gamma, gamma) parameter (> 0).
    weights: (N,) 1 for real pairs, 0 for padding; None = all real.
    alpha_per_pair: draw alpha per pair (True) or once for the batch.

  Returns:
    (loss, metrics) with `loss_pc_q` (L_PQ), `loss_pc_c` (L_PC), `loss_pc` (their sum).
  """
  if f_q.shape != f_c.shape or f_q.shape != f_t.shape or f_q.ndim != 2:
    raise ValueError(f'proxy_calibration_loss: f_q, f_c, f_t must all be (N, D), got '
                     f'{f_q.shape}, {f_c.shape}, {f_t.shape}.')
  if gamma <= 0:
    raise ValueError(f'proxy_calibration.gamma must be > 0, got {gamma}.')
  n = f_q.shape[0]
  weights = jnp.ones((n,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
  rng_alpha, rng_perm = jax.random.split(rng)
  alpha = sample_alpha(rng_alpha, gamma, (n,) if alpha_per_pair else ())
  perm = permute_valid(rng_perm, weights > 0)
  loss_pq, loss_pc = mixed_cosine_losses(f_q, f_c, f_t, weights, alpha, perm)
  loss = loss_pq + loss_pc
  return loss, {'loss_pc_q': loss_pq, 'loss_pc_c': loss_pc, 'loss_pc': loss}
