"""The launchers' persistent compilation cache: where it goes, how to move or disable it, and reuse."""
import os
import subprocess
import sys

from ovsnet_jax import compilation_cache as cc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cache_dir_default_override_and_off():
  home = os.path.expanduser('~')
  assert cc.cache_dir({}) == os.path.join(home, '.cache', 'ovsnet_jax', 'jax_compilation_cache')
  assert cc.cache_dir({'XDG_CACHE_HOME': '/x'}) == '/x/ovsnet_jax/jax_compilation_cache'
  assert cc.cache_dir({'OVSNET_CACHE': '/o', 'XDG_CACHE_HOME': '/x'}) == '/o/jax_compilation_cache'
  assert cc.cache_dir({cc.ENV: '/mine', 'XDG_CACHE_HOME': '/x'}) == '/mine'
  for off in ('off', 'OFF', '', '0', 'none'):
    assert cc.cache_dir({cc.ENV: off}) is None
  assert cc.cache_dir({'JAX_COMPILATION_CACHE_DIR': '/jax', cc.ENV: '/mine'}) is None  # JAX's own wins


_MAIN = """
import jax, jax.numpy as jnp
from ovsnet_jax import cli
def main(argv):
  print('CACHE', jax.config.jax_compilation_cache_dir)
  print(float(jax.jit(lambda x: jnp.sin(x) * 3)(1.0)))
cli.run(main)
"""


def test_launchers_runner_turns_the_cache_on_and_reuses_it(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_COMPILATION_CACHE_DIR', cc.ENV, 'OVSNET_CACHE')}
  env.update(XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=REPO, JAX_PLATFORMS='cpu',
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  run = lambda e: subprocess.run([sys.executable, '-c', _MAIN], env=e, capture_output=True, text=True, check=True)
  first = run(env)
  cache = tmp_path / 'ovsnet_jax' / 'jax_compilation_cache'
  assert f'CACHE {cache}' in first.stdout
  entries = sorted(os.listdir(cache))
  assert entries  # the compiled program was written
  run(env)
  assert sorted(os.listdir(cache)) == entries  # same program: read back, nothing new written
  off = run({**env, cc.ENV: 'off'})
  assert 'CACHE None' in off.stdout
