"""Conversion of open_clip CLIP checkpoints to our Flax param tree, and loading the result.

Input: an open_clip weight file (`open_clip_model.safetensors`, or a torch file such as
`open_clip_pytorch_model.bin` read with `torch.load(weights_only=True)`: a bare state dict,
open_clip's training checkpoint `{'state_dict': ...}`, optionally with DDP's `module.` prefix).
Every tensor is consumed and every Flax param is filled, else a ValueError names the tensor.

Output directory (CONTRACTS.md): `params/` (orbax PyTree of `CLIP(variant)` params),
`clip_config.json` ({"variant", "source", "sha256"}) and `bpe_simple_vocab_16e6.txt.gz`.
It is written to a temporary sibling directory and renamed at the end, so a failed conversion
leaves nothing behind.
"""
import hashlib
import json
import os
import re
import shutil
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp

from ovsnet_jax.models import clip

CONFIG_NAME = 'clip_config.json'
PARAMS_NAME = 'params'
BPE_NAME = 'bpe_simple_vocab_16e6.txt.gz'
# Text-only variants ignore the image tower: every tensor under this prefix (OpenAI ViT-L/14's
# `visual.conv1`, `visual.class_embedding`, `visual.positional_embedding`, `visual.ln_pre`,
# `visual.transformer.*`, `visual.ln_post`, `visual.proj`).
TEXT_ONLY_IGNORED_PREFIX = 'visual.'
# Metadata scalars that OpenAI's TorchScript-derived state dicts carry; never weights.
TEXT_ONLY_IGNORED_KEYS = ('input_resolution', 'context_length', 'vocab_size')

# Flax module path ('/'-joined) -> torch module name. Leaf names: kernel/scale/embedding ->
# weight, bias -> bias, others (gamma, positional_embedding, ...) are kept.
_MODULE_RULES = (
    (r'visual/trunk/stem_conv', 'visual.trunk.stem.0'),
    (r'visual/trunk/stem_norm', 'visual.trunk.stem.1'),
    (r'visual/trunk/stage(\d+)/downsample_norm', r'visual.trunk.stages.\1.downsample.0'),
    (r'visual/trunk/stage(\d+)/downsample_conv', r'visual.trunk.stages.\1.downsample.1'),
    (r'visual/trunk/stage(\d+)/block(\d+)/(conv_dw|norm)', r'visual.trunk.stages.\1.blocks.\2.\3'),
    (r'visual/trunk/stage(\d+)/block(\d+)/(fc1|fc2)', r'visual.trunk.stages.\1.blocks.\2.mlp.\3'),
    (r'visual/trunk/stage(\d+)/block(\d+)', r'visual.trunk.stages.\1.blocks.\2'),
    (r'visual/head_norm', 'visual.trunk.head.norm'),
    (r'visual/proj', 'visual.head.proj'),
    (r'visual/mlp/(fc1|fc2)', r'visual.head.mlp.\1'),
    (r'text/token_embedding', 'token_embedding'),
    (r'text/block(\d+)/(ln_1|ln_2)', r'transformer.resblocks.\1.\2'),
    (r'text/block(\d+)/attn/in_proj', r'transformer.resblocks.\1.attn.in_proj_'),
    (r'text/block(\d+)/attn/out_proj', r'transformer.resblocks.\1.attn.out_proj'),
    (r'text/block(\d+)/(c_fc|c_proj)', r'transformer.resblocks.\1.mlp.\2'),
    (r'text/ln_final', 'ln_final'),
    (r'text', ''),
    (r'', ''),
)
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight'}


def torch_key(flax_path: tuple[str, ...]) -> str:
  """Name in open_clip's state dict of the Flax param at `flax_path`."""
  module, leaf = '/'.join(flax_path[:-1]), flax_path[-1]
  for pattern, repl in _MODULE_RULES:
    if re.fullmatch(pattern, module):
      prefix = re.sub(f'^{pattern}$', repl, module)
      leaf = _LEAF_NAMES.get(leaf, leaf)
      return prefix + leaf if (not prefix or prefix.endswith('_')) else f'{prefix}.{leaf}'
  raise ValueError(f'No open_clip name for Flax param {"/".join(flax_path)!r}.')


def to_flax(leaf: str, array: np.ndarray) -> np.ndarray:
  """Torch layout -> Flax layout: conv OIHW -> HWIO, linear (out, in) -> (in, out)."""
  if leaf == 'kernel' and array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if leaf == 'kernel' and array.ndim == 2:
    return array.T
  return array


def torch_shape(leaf: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch-layout shape of a Flax param (inverse of `to_flax` on shapes)."""
  if leaf == 'kernel' and len(flax_shape) == 4:
    return tuple(flax_shape[i] for i in (3, 2, 0, 1))
  if leaf == 'kernel' and len(flax_shape) == 2:
    return tuple(flax_shape[::-1])
  return tuple(flax_shape)


def key_map(variant: str) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """{open_clip key: (Flax path, torch-layout shape)} for every param of `CLIP(variant)`."""
  shapes = clip.param_shapes(variant)
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    names = tuple(p.key for p in path)
    out[torch_key(names)] = (names, torch_shape(names[-1], leaf.shape))
  return out


def _strip_prefix(state: dict, prefix: str) -> dict:
  if state and all(k.startswith(prefix) for k in state):
    return {k[len(prefix):]: v for k, v in state.items()}
  return state


def safe_load_error(e: BaseException) -> str:
  """The message of a failed `torch.load(weights_only=True)`, without torch's advice to retry with
  weights_only=False (which would run the file's pickled code): only the refused global is kept."""
  why = str(e)
  if 'weights_only' not in why:
    return why
  kept = [line.strip() for line in why.splitlines() if 'Unpickler error' in line or 'Unsupported global' in line]
  return ' '.join(kept) or 'the file holds pickled objects other than tensors'


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads an open_clip weight file into {key: float32 numpy array} without unpickling objects."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'open_clip checkpoint {path!r} does not exist.')
  try:
    if path.endswith('.safetensors'):
      import safetensors.torch  # pylint: disable=g-import-not-at-top
      state = safetensors.torch.load_file(path, device='cpu')
    else:
      import torch  # pylint: disable=g-import-not-at-top
      state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except (torch/safetensors raise many types)
    raise ValueError(f'Could not read open_clip checkpoint {path!r} (truncated or not a '
                     f'safetensors/torch weights file): {type(e).__name__}: {safe_load_error(e)}') from e
  if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
    state = state['state_dict']  # open_clip training checkpoint
  if not isinstance(state, dict) or not all(hasattr(v, 'shape') for v in state.values()):
    raise ValueError(f'open_clip checkpoint {path!r}: expected a state dict of tensors '
                     f'(or {{"state_dict": ...}}), got {type(state).__name__}.')
  state = _strip_prefix(state, 'module.')
  return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in state.items()}


def check_state_shapes(shapes: dict[str, tuple[int, ...]], variant: str, source: str = '<state>'):
  """Checks an open_clip state dict's {key: shape} against `CLIP(variant)`; returns `key_map`.

  Raises:
    ValueError naming the first missing, unexpected or mis-shaped tensor.
  """
  expected = key_map(variant)
  ignored = set()
  if not clip.get_variant(variant).has_visual:
    ignored = {k for k in shapes if k.startswith(TEXT_ONLY_IGNORED_PREFIX)
               or k in TEXT_ONLY_IGNORED_KEYS}
  missing = [k for k in expected if k not in shapes]
  if missing:
    k = missing[0]
    raise ValueError(f'{source}: missing tensor {k!r} (expected shape {expected[k][1]}) for '
                     f'CLIP variant {variant!r}; {len(missing)} missing in all.')
  extra = sorted(set(shapes) - set(expected) - ignored)
  if extra:
    raise ValueError(f'{source}: unexpected tensor {extra[0]!r} (shape '
                     f'{tuple(shapes[extra[0]])}) not used by CLIP variant {variant!r}; '
                     f'{len(extra)} unexpected in all: {extra[:5]}.')
  for key, (_, shape) in expected.items():
    if tuple(shapes[key]) != shape:
      raise ValueError(f'{source}: tensor {key!r} has shape {tuple(shapes[key])}, expected '
                       f'{shape} for CLIP variant {variant!r}.')
  return expected


def convert_state_dict(state: dict[str, np.ndarray], variant: str, source: str = '<state>'):
  """open_clip state dict -> CLIP(variant) Flax params (float32 numpy), strictly checked."""
  expected = check_state_shapes({k: tuple(v.shape) for k, v in state.items()}, variant, source)
  params = {}
  for key, (names, _) in expected.items():
    node = params
    for name in names[:-1]:
      node = node.setdefault(name, {})
    array = np.asarray(state[key], np.float32)
    node[names[-1]] = np.array(to_flax(names[-1], array), np.float32, order='C')
  return params


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def bpe_vocab_path() -> str:
  """Our shipped BPE vocabulary, else the copy inside the installed open_clip package."""
  ours = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'text', BPE_NAME)
  if os.path.isfile(ours):
    return ours
  import open_clip  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(open_clip.__file__), BPE_NAME)


def write_checkpoint_dir(params: dict, config: dict, out: str, overwrite: bool = False) -> str:
  """Writes params (orbax), `config` (JSON) and the BPE vocabulary to `out`, atomically.

  Everything goes to a temporary sibling directory first, renamed to `out` at the end; on any
  error the temporary directory is removed and `out` is left as it was.
  """
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise ValueError(f'Output directory {out!r} exists; pass --overwrite to replace it.')
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.tmp-', dir=parent)
  old = None
  try:
    # Synchronous, so that nothing is still writing into `tmp` if it has to be removed.
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
      ckptr.save(os.path.join(tmp, PARAMS_NAME), params)
    with open(os.path.join(tmp, CONFIG_NAME), 'w') as f:
      json.dump(config, f, indent=2)
    shutil.copyfile(bpe_vocab_path(), os.path.join(tmp, BPE_NAME))
    if os.path.exists(out):  # --overwrite: move the old directory aside, delete it last
      old = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.old-', dir=parent)
      os.rename(out, os.path.join(old, 'out'))
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:  # put the old directory back
      if not os.path.exists(out) and os.path.exists(os.path.join(old, 'out')):
        os.rename(os.path.join(old, 'out'), out)
      shutil.rmtree(old, ignore_errors=True)
    raise
  if old is not None:
    shutil.rmtree(old)
  return out


def convert_checkpoint(variant: str, checkpoint: str, out: str, overwrite: bool = False) -> str:
  """Converts an open_clip weight file to a checkpoint directory `out` (see module docstring)."""
  clip.get_variant(variant)
  if os.path.exists(out) and not overwrite:
    raise ValueError(f'Output directory {os.path.abspath(out)!r} exists; pass --overwrite to '
                     'replace it.')
  params = convert_state_dict(read_state_dict(checkpoint), variant, source=checkpoint)
  config = {'variant': variant, 'source': os.path.abspath(checkpoint),
            'sha256': _sha256(checkpoint)}
  return write_checkpoint_dir(params, config, out, overwrite=overwrite)


def read_clip_config(ckpt_dir: str) -> dict:
  """Reads and checks `DIR/clip_config.json`."""
  path = os.path.join(ckpt_dir, CONFIG_NAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path!r} does not exist: not a converted CLIP checkpoint directory '
                            '(write one with launch/convert_open_clip.py).')
  with open(path) as f:
    config = json.load(f)
  for field in ('variant', 'source', 'sha256'):
    if field not in config:
      raise ValueError(f'{path!r}: missing field {field!r}.')
  clip.get_variant(config['variant'])
  return config


def load_clip_checkpoint(ckpt_dir: str) -> tuple[str, dict]:
  """Reads a converted checkpoint directory -> (variant, params), validated against the model."""
  config = read_clip_config(ckpt_dir)
  variant = config['variant']
  for name in (PARAMS_NAME, BPE_NAME):
    if not os.path.exists(os.path.join(ckpt_dir, name)):
      raise FileNotFoundError(f'{os.path.join(ckpt_dir, name)!r} does not exist.')
  with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
    params = ckptr.restore(os.path.abspath(os.path.join(ckpt_dir, PARAMS_NAME)))
  params = jax.tree.map(np.asarray, params)
  want = jax.tree_util.tree_flatten_with_path(clip.param_shapes(variant))[0]
  got = {tuple(p.key for p in path): x
         for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  for path, leaf in want:
    names = tuple(p.key for p in path)
    if names not in got:
      raise ValueError(f'{ckpt_dir!r}: param {"/".join(names)} missing for {variant!r}.')
    if got[names].shape != leaf.shape or got[names].dtype != np.float32:
      raise ValueError(f'{ckpt_dir!r}: param {"/".join(names)} is {got[names].dtype}'
                       f'{got[names].shape}, expected float32{leaf.shape}.')
  if len(got) != len(want):
    extra = sorted('/'.join(n) for n in set(got) - {tuple(p.key for p in w) for w, _ in want})
    raise ValueError(f'{ckpt_dir!r}: unexpected params {extra[:5]} for {variant!r}.')
  return variant, params
