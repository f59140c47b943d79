"""Session fixtures shared by all tests: a real open_clip checkpoint of the tiny CLIP.

- `tiny_clip_checkpoint`: the `test_tiny` CLIP (`ovsnet_jax.models.clip.CLIP_VARIANTS`) built by
  `open_clip.create_model` with seeded random weights (LayerNorms and layer scales perturbed so
  that every param matters), saved as open_clip publishes weights. A dict with
  `model_name` ('test_tiny', registered in open_clip), `safetensors` and `bin` (file paths).
  Rebuild the torch model with `open_clip.create_model('test_tiny', pretrained=<path>)`.
- `tiny_clip_dir`: that checkpoint converted by `launch/convert_open_clip.py`'s code path
  (load with `ovsnet_jax.convert.open_clip.load_clip_checkpoint`).
"""
import os
import tempfile

import pytest

import launcher_env

# The text-classifier cache defaults to the user's ~/.cache; tests keep theirs in a temporary folder.
os.environ.setdefault('OVSNET_JAX_CACHE', tempfile.mkdtemp(prefix='ovsnet_jax_test_cache_'))
# One persistent XLA compilation cache for the in-process tests and the launcher subprocesses (which
# set the same directory): the tiny OVSNet programs that several tests compile are compiled once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', launcher_env.XLA_CACHE)

from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.convert import open_clip_testing


@pytest.fixture(scope='session')
def tiny_clip_checkpoint(tmp_path_factory) -> dict:
  import open_clip  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('tiny_clip')
  name = open_clip_testing.register_test_tiny(str(root / 'open_clip_configs'))
  with torch.random.fork_rng():
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
  open_clip_testing.perturb_norms_and_scales(model, seed=0)
  paths = open_clip_testing.save_open_clip_weights(model, str(root / 'weights'))
  return {'model_name': name, **paths}


@pytest.fixture(scope='session')
def tiny_clip_dir(tiny_clip_checkpoint, tmp_path_factory) -> str:
  out = tmp_path_factory.mktemp('tiny_clip_converted') / 'test_tiny'
  return convert.convert_checkpoint('test_tiny', tiny_clip_checkpoint['safetensors'], str(out))
