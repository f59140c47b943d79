"""Shared check for the `remat_layers` flags: recomputing layers in the backward pass changes nothing."""
import re

import jax
import numpy as np


def assert_remat_is_exact(loss, plain, rematted, params, *args):
  """`loss(module, params, *args)` of `plain` and `rematted`: only `rematted`'s program holds a remat,
  and their values and gradients (w.r.t. params and args) agree. Returns `rematted`'s gradients."""
  fns = [lambda p, *a, m=m: loss(m, p, *a) for m in (plain, rematted)]
  jaxprs = [str(jax.make_jaxpr(f)(params, *args)) for f in fns]
  remat = [bool(re.search(r'\b(remat2?|checkpoint)\[', j)) for j in jaxprs]  # the primitive's name varies
  assert remat == [False, True]  # the flag reaches the scan
  argnums = tuple(range(1 + len(args)))
  (want_value, want_grads), (value, grads) = [jax.jit(jax.value_and_grad(f, argnums=argnums))(params, *args)
                                              for f in fns]
  np.testing.assert_allclose(float(value), float(want_value), rtol=1e-6)
  # Float-reassociation noise only: 1e-5 of the largest gradient (leaves whose true gradient is ~0,
  # e.g. biases before a LayerNorm, are pure noise at the 1e-9 level either way).
  scale = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(want_grads))
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5 * scale, rtol=0)
  return grads
