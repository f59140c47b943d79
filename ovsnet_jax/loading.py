"""One loading path for every launcher and the Python API: config, CLIP, params, text classifier.

  loaded = loading.load_model(config, checkpoint=..., clip=..., text_cache=...)
  loaded.params, loaded.classify(class_names), loaded.model

`checkpoint` is one of
  - ''                    a randomly initialised decoder (pipeline checks; labels are meaningless),
  - a training workdir, its `checkpoints/` or one `checkpoints/<step>` folder (orbax, launch/train.py),
  - a weights file (.pth/.pt/.pkl/.safetensors): an FC-CLIP detectron2 checkpoint such as FC-CLIP's
    released `fcclip_cocopan.pth`, or a file written by launch/export_torch.py
    (`convert/fcclip_checkpoint.py`). Its CLIP (image and text tower) is used unless `clip` is given.

The text classifier is cached by default in the user cache (`text_cache_dir`).
"""
import hashlib
import importlib.util
import os
import sys
from typing import Any, Callable, NamedTuple, Optional

import jax
import ml_collections
import numpy as np

from ovsnet_jax import cli

NO_CACHE = 'none'


class Loaded(NamedTuple):
  """A ready model: its config, module, params, CLIP params, text classifier and where params came from."""
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  clip_params: dict
  classify: Callable
  source: str


def repo_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(spec) -> ml_collections.ConfigDict:
  """A ConfigDict as is, or a config file 'configs/ovsnet_large.py[:arg]' (its `get_config(arg)`)."""
  if isinstance(spec, ml_collections.ConfigDict):
    return spec
  if not isinstance(spec, str) or not spec:
    raise cli.UserError(f'config: expected a ConfigDict or a config file like configs/smoke.py, got {spec!r}')
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path) and os.path.isfile(os.path.join(repo_root(), path)):
    path = os.path.join(repo_root(), path)
  if not os.path.isfile(path):
    raise cli.UserError(f'config file {path!r} does not exist (expected e.g. configs/ovsnet_base.py).')
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))  # `from configs import common`
  if root not in sys.path:
    sys.path.insert(0, root)
  module_spec = importlib.util.spec_from_file_location(f'_ovsnet_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def ensure_clip_checkpoint(config: ml_collections.ConfigDict) -> None:
  """Pretrains the CLIP of `config.clip_pretrain` (the shapes world) if its cache entry is missing.

  Only when `config.clip_pretrain` exists and `config.clip_checkpoint` is its cache directory
  (`clip_pretraining.checkpoint_dir`); the CLIP is then loaded like any converted one.
  """
  if not config.get('clip_pretrain') or not config.clip_checkpoint:
    return
  from ovsnet_jax import clip_pretraining  # pylint: disable=g-import-not-at-top
  settings = clip_pretraining.Settings(**config.clip_pretrain)
  settings.check()
  want = clip_pretraining.checkpoint_dir(settings)
  if os.path.abspath(config.clip_checkpoint) == os.path.abspath(want):
    clip_pretraining.ensure_pretrained(settings)
  elif not os.path.exists(config.clip_checkpoint):
    raise ValueError(f'config.clip_checkpoint={config.clip_checkpoint} does not exist and is not the '
                     f'cache directory of config.clip_pretrain ({want}): set both together.')


def load_clip(config: ml_collections.ConfigDict) -> tuple[str, dict]:
  """(variant, CLIP params {'visual', 'text', 'logit_scale'}) from `config.clip_checkpoint`, or random.

  Random init (no checkpoint) uses `config.model.clip_variant` and `config.seed`: the smoke run and
  tests train a tiny OVSNet on a random CLIP.
  """
  from ovsnet_jax.models import clip  # pylint: disable=g-import-not-at-top
  ensure_clip_checkpoint(config)
  if config.clip_checkpoint:
    from ovsnet_jax.convert import open_clip as convert_open_clip  # pylint: disable=g-import-not-at-top
    variant, params = convert_open_clip.load_clip_checkpoint(config.clip_checkpoint)
    if variant != config.model.clip_variant:
      raise ValueError(f'config.model.clip_variant={config.model.clip_variant!r} but '
                       f'{config.clip_checkpoint} holds {variant!r}')
    return variant, params
  variant = config.model.clip_variant
  return variant, clip.init_params(variant, jax.random.PRNGKey(config.seed + 1))


def params_digest(tree) -> str:
  """sha256 (24 hex digits) of a param tree's leaves: the cache identity of weights without a file."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return h.hexdigest()[:24]


def text_cache_dir(config, override: str = '') -> Optional[str]:
  """The text-classifier cache: `override`, else config.text.cache_dir, else the user cache
  (`classifier.default_cache_dir()`, $OVSNET_JAX_CACHE overrides); 'none' turns it off."""
  from ovsnet_jax.text import classifier  # pylint: disable=g-import-not-at-top
  choice = override or config.text.get('cache_dir', '') or classifier.default_cache_dir()
  return None if choice == NO_CACHE else choice


def text_classifier(config: ml_collections.ConfigDict, clip_params: dict, cache_dir: Optional[str],
                    progress: bool = True):
  """The TextClassifier of the run's CLIP (a converted checkpoint when `config.clip_checkpoint`,
  else the given `clip_params`), cached in `cache_dir` ('' / None: no cache)."""
  from ovsnet_jax.text import classifier  # pylint: disable=g-import-not-at-top
  if config.clip_checkpoint:
    return classifier.TextClassifier.from_checkpoint(config.clip_checkpoint, cache_dir=cache_dir or None,
                                                     progress=progress)
  cache_id = None
  if cache_dir:
    cache_id = f'params:{config.model.clip_variant}:{params_digest(clip_params["text"])}'
  return classifier.TextClassifier.from_params(config.model.clip_variant, clip_params['text'],
                                               cache_dir=cache_dir or None, cache_id=cache_id,
                                               progress=progress)


def random_params(config, clip_params: dict) -> dict:
  """A randomly initialised decoder around `clip_params` (compiled init: faster than eager)."""
  from ovsnet_jax.models import ovsnet  # pylint: disable=g-import-not-at-top
  init = jax.jit(lambda key, clip: ovsnet.init_params(config, key, clip))
  return jax.device_get(init(jax.random.PRNGKey(config.seed), clip_params))


def load_params(config, checkpoint: str, clip_params: Optional[dict]) -> tuple[dict, Optional[dict], str]:
  """(OVSNet params, CLIP params found in the checkpoint or None, description of the source)."""
  from ovsnet_jax.convert import fcclip_checkpoint  # pylint: disable=g-import-not-at-top
  if not checkpoint:
    if clip_params is None:
      raise ValueError('load_params: a random decoder needs clip_params')
    return random_params(config, clip_params), None, 'random init'
  if os.path.isfile(checkpoint):
    if not checkpoint.endswith(fcclip_checkpoint.SUFFIXES):
      raise cli.UserError(f'--checkpoint {checkpoint!r}: a file must be a weights file '
                          f'({", ".join(fcclip_checkpoint.SUFFIXES)}); a training checkpoint is a directory.')
    try:
      params, file_clip = fcclip_checkpoint.load(checkpoint, config)
    except ValueError as e:
      raise cli.UserError(str(e)) from e
    return params, file_clip, f'weights file {checkpoint}'
  if not os.path.isdir(checkpoint):
    raise cli.UserError(f'--checkpoint {checkpoint!r} does not exist (expected a training workdir, a '
                        'checkpoints/<step> folder or an FC-CLIP .pth file).')
  from ovsnet_jax import evaluate  # pylint: disable=g-import-not-at-top
  return jax.device_get(evaluate.load_params(checkpoint)), None, f'training checkpoint {checkpoint}'


def load_model(config, checkpoint: str = '', clip: str = '', text_cache: str = '', fusion: Optional[str] = None,
               progress: bool = True) -> Loaded:
  """Config (or config file) + checkpoint (+ CLIP directory) -> `Loaded`.

  Args:
    config: ConfigDict or config file spec ('configs/ovsnet_large.py', 'configs/ovsnet_base.py:fusion=none').
    checkpoint: see the module doc ('' -> random decoder).
    clip: converted CLIP directory; '' -> config.clip_checkpoint, else the checkpoint file's own CLIP,
      else a random CLIP.
    text_cache: text-classifier cache directory ('' -> `text_cache_dir`, 'none' -> off).
    fusion: override config.model.fusion: 'none' (FC-CLIP's inference) or 'gfa' (training-free GFA
      on FC-CLIP weights).
  """
  from ovsnet_jax.models import ovsnet  # pylint: disable=g-import-not-at-top
  config = load_config(config)
  if clip or fusion:
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
  if clip:
    config.clip_checkpoint = clip
  if fusion:
    if fusion not in ('none', 'gfa'):
      raise cli.UserError(f"fusion {fusion!r}: expected 'none' (FC-CLIP) or 'gfa' (training-free GFA).")
    config.model.fusion = fusion
  is_file = bool(checkpoint) and os.path.isfile(checkpoint)
  clip_params = None if (is_file and not config.clip_checkpoint) else load_clip(config)[1]
  params, file_clip, source = load_params(config, checkpoint, clip_params)
  if clip_params is None:
    if file_clip is None:
      raise cli.UserError(f'--checkpoint {checkpoint!r} holds no CLIP text tower; pass --clip=CLIP_DIR '
                          '(launch/convert_open_clip.py).')
    clip_params = file_clip
  classify = text_classifier(config, clip_params, text_cache_dir(config, text_cache), progress=progress)
  return Loaded(config, ovsnet.build_model(config), params, clip_params, classify, source)
