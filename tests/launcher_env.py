"""The environment of the tests' launcher subprocesses (training runs of a few steps).

CPU; the repo importable; one persistent XLA compilation cache for all of them (tests/conftest.py
points the in-process tests at the same directory); and LLVM's cheap code generation. These runs
are a few steps of the tiny model, so compiling dominates them: measured on the tests/test_sharding.py
worker (2 cores), 124 s -> 95 s wall and 176 s -> 116 s CPU, with identical losses. Not for
compute-bound tests: the same flags make the CLIP pretraining step 2.2x slower (508 -> 1133 ms). Nor for
tests that compare numerics across programs: the cheap code generation sums less accurately (the
two-process run of tests/test_multiprocess.py then differed from the one-process run by 4.3e-5
relative after 3 steps, 6.7e-6 at step 0: over the 1e-5 it meets with the default code generation).
"""
import os
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XLA_CACHE = os.path.join(tempfile.gettempdir(), 'ovsnet_jax_tests_xla_cache')
FAST_COMPILE_FLAGS = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'


def launcher_env(xla_flags: str = '', fast_compile: bool = True) -> dict:
  """os.environ plus the settings above; `xla_flags` are added to XLA_FLAGS."""
  fast = FAST_COMPILE_FLAGS if fast_compile else ''
  flags = ' '.join(f for f in (os.environ.get('XLA_FLAGS', ''), fast, xla_flags) if f)
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]),
          'JAX_COMPILATION_CACHE_DIR': XLA_CACHE, 'XLA_FLAGS': flags}
