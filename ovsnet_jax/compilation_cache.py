"""JAX's persistent compilation cache for the launchers: a shape compiled once is reused across runs.

Evaluation pads each image to a multiple of 32 (`eval.pad_mode='multiple'`, FC-CLIP's protocol), so
a dataset has a few dozen input shapes, each one compile of the model; with the cache on, the next
evaluation (or the next periodic evaluation of a later run) loads them from disk instead.

Every launcher turns it on through `cli.run`. Where:
  - `$JAX_COMPILATION_CACHE_DIR`, when set: JAX's own setting, left as it is;
  - else `$OVSNET_COMPILATION_CACHE`: a directory, or 'off' (also '', '0', 'none') to disable;
  - else `$OVSNET_CACHE/jax_compilation_cache` when `$OVSNET_CACHE` is set, else
    `$XDG_CACHE_HOME/ovsnet_jax/jax_compilation_cache`, else `~/.cache/ovsnet_jax/jax_compilation_cache`.
"""
import os
from typing import Mapping, Optional

import jax

ENV = 'OVSNET_COMPILATION_CACHE'
OFF = ('off', '', '0', 'none', 'false')


def default_dir(environ: Mapping[str, str] = os.environ) -> str:
  """The default cache directory under the user cache (see the module docstring)."""
  base = environ.get('OVSNET_CACHE') or os.path.join(
      environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'ovsnet_jax')
  return os.path.join(base, 'jax_compilation_cache')


def cache_dir(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """The directory the launchers use, or None when disabled or left to `$JAX_COMPILATION_CACHE_DIR`."""
  if environ.get('JAX_COMPILATION_CACHE_DIR'):
    return None
  if ENV in environ:
    value = environ[ENV].strip()
    return None if value.lower() in OFF else os.path.expanduser(value)
  return default_dir(environ)


def enable(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """Turns JAX's persistent compilation cache on at `cache_dir(environ)`; returns it (None: untouched)."""
  path = cache_dir(environ)
  if path is not None:
    jax.config.update('jax_compilation_cache_dir', path)
  return path
