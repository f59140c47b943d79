"""Repeated layers applied with `jax.lax.scan` over their stacked params: one compiled body instead
of N copies (compile time and code size), with the param tree left as it is.

The layers keep their own subtrees (`layers_0`, `layers_1`, ...), so checkpoints, the FC-CLIP
converters and the PyTorch export see the same names whether or not a model scans. At init the
layers run unrolled (that creates the params); at apply `stack` gathers their params into one
tree with a leading layer axis and the caller scans an unbound copy of the layer over it.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def stack(params: dict, names: Sequence[str]) -> dict:
  """The subtrees `params[name]` of equal structure, stacked along a new leading axis (len(names), ...)."""
  missing = [n for n in names if n not in params]
  if missing:
    raise ValueError(f'layer_scan.stack: params lack {missing} (have {sorted(params)})')
  return jax.tree.map(lambda *xs: jnp.stack(xs), *[params[n] for n in names])


def scan(layer: nn.Module, stacked: dict, carry, *args, remat: bool = False):
  """carry -> layer(carry, *args) for each layer's params in `stacked` (leading axis), in order.

  `layer` is unbound (built with `parent=None`) and has no RNG-using or stateful layers. `remat`:
  each layer is recomputed in the backward pass (`jax.checkpoint`), so the scan saves only each
  layer's input carry instead of every intermediate the layer's backward needs.
  """
  body = lambda c, p: (layer.apply({'params': p}, c, *args), None)
  if remat:
    body = jax.checkpoint(body, prevent_cse=False)  # inside scan, CSE cannot undo the recompute
  return jax.lax.scan(body, carry, stacked)[0]
