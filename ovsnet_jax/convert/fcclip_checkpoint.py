"""FC-CLIP's released detectron2 checkpoints -> OVSNet params (and the CLIP they carry).

A detectron2 checkpoint is a pickled dict ``{'model': state_dict, 'optimizer': ..., 'scheduler':
..., 'iteration': N, ...}`` (model-zoo files may hold numpy arrays instead of tensors, and a bare
state dict also occurs). It is read with ``torch.load(weights_only=True)``: no code is unpickled;
numpy arrays are allowed through torch's allow-list of the few numpy reconstruction globals only.

GFA has no parameters, so FC-CLIP's ``FCCLIP`` state dict is exactly an OVSNet model's: the names
are mapped back with ``export_torch.import_torch`` (the inverse of the exporter's table). FCCLIP's
``backbone.clip_model`` is the whole open_clip model, so the file also yields the CLIP text tower
(``clip_params``): no separate CLIP download is needed to segment with a released checkpoint.

Released files read (bytedance/fc-clip README, model zoo): ``fcclip_cocopan.pth``, FC-CLIP
ConvNeXt-Large (convnext_large_d_320, 250 queries) -> ``configs/ovsnet_large.py``. The
ConvNeXt-B layout (convnext_base_w_320, ``configs/ovsnet_base.py``) reads the same way. The
ResNet-CLIP checkpoints of that table are not supported (no ResNet CLIP here).
"""
import os
from typing import Optional

import numpy as np

from ovsnet_jax.convert import export_torch
from ovsnet_jax.convert import open_clip as convert_open_clip
from ovsnet_jax.models import clip

SUFFIXES = ('.pth', '.pt', '.pkl', '.safetensors')
NUMPY_GLOBALS = ('numpy.core.multiarray._reconstruct', 'numpy._core.multiarray._reconstruct',
                 'numpy.ndarray', 'numpy.dtype', 'numpy.core.multiarray.scalar',
                 'numpy._core.multiarray.scalar')


def is_checkpoint_file(path: str) -> bool:
  """A file with a torch / safetensors suffix (as opposed to a training workdir)."""
  return os.path.isfile(path) and path.endswith(SUFFIXES)


def _numpy_safe_globals() -> list:
  """The numpy reconstruction functions and dtype classes a pickled ndarray needs, nothing else."""
  import importlib  # pylint: disable=g-import-not-at-top
  out = []
  for name in NUMPY_GLOBALS:
    module, attr = name.rsplit('.', 1)
    try:
      out.append(getattr(importlib.import_module(module), attr))
    except (ImportError, AttributeError):
      pass
  out += [type(np.dtype(t)) for t in ('float32', 'float64', 'float16', 'int64', 'int32', 'uint8', 'bool')]
  return out


def _to_numpy(v, key: str, source: str) -> np.ndarray:
  if isinstance(v, np.ndarray):
    return v
  if hasattr(v, 'detach'):  # torch.Tensor
    v = v.detach().cpu()
    return (v.float() if v.is_floating_point() else v).numpy()
  raise ValueError(f'{source}: entry {key!r} of the model state is a {type(v).__name__}, expected a tensor '
                   'or a numpy array.')


def read_state(path: str) -> dict[str, np.ndarray]:
  """The model state dict of a detectron2 / FC-CLIP checkpoint file, as {key: numpy array}.

  Accepts ``{'model': state, ...}`` (extra entries ignored), a bare state dict, or a safetensors
  file; values may be tensors or numpy arrays. A leading ``module.`` (DDP) is stripped.

  Raises:
    FileNotFoundError / ValueError naming the file and what was expected.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint file {path!r} does not exist.')
  try:
    if path.endswith('.safetensors'):
      from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
      obj = dict(st_numpy.load_file(path))
    else:
      import torch  # pylint: disable=g-import-not-at-top
      with torch.serialization.safe_globals(_numpy_safe_globals()):
        obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except (torch raises many types)
    why = convert_open_clip.safe_load_error(e)
    raise ValueError(f'could not read checkpoint {path!r} (truncated, not a torch/safetensors file, or it '
                     f'pickles code, which is never loaded): {type(e).__name__}: {why}') from e
  if isinstance(obj, dict) and isinstance(obj.get('model'), dict):
    obj = obj['model']  # detectron2 Checkpointer format
  if not isinstance(obj, dict) or not obj:
    raise ValueError(f"{path!r}: expected a detectron2 checkpoint {{'model': state_dict, ...}} or a state "
                     f'dict, got {type(obj).__name__}.')
  state = {str(k): v for k, v in obj.items()}
  if all(k.startswith('module.') for k in state):
    state = {k[len('module.'):]: v for k, v in state.items()}
  return {k: _to_numpy(v, k, path) for k, v in state.items() if not k.startswith('__')}


def infer_layout(shapes: dict, source: str = '<state>') -> tuple[str, int]:
  """(CLIP variant, number of queries) of an FC-CLIP state dict, from its tensor shapes."""
  q = shapes.get(export_torch.PREDICTOR_PREFIX + 'query_feat.weight')
  if q is None:
    raise ValueError(f'{source}: no {export_torch.PREDICTOR_PREFIX}query_feat.weight: not an FC-CLIP / '
                     'OVSNet model state.')
  visual = {k[len(export_torch.CLIP_PREFIX):]: tuple(s) for k, s in shapes.items()
            if k.startswith(export_torch.CLIP_PREFIX + 'visual.')}
  stem = visual.get('visual.trunk.stem.0.weight', (None,))[0]
  for variant in clip.CLIP_VARIANTS:
    if not clip.get_variant(variant).has_visual or clip.get_variant(variant).widths[0] != stem:
      continue  # cheap filter before the (eval_shape) key map
    want = {k: s for k, (_, s) in convert_open_clip.key_map(variant).items() if k.startswith('visual.')}
    if want == visual:
      return variant, int(q[0])
  raise ValueError(f'{source}: its CLIP image tower ({len(visual)} tensors) matches no known CLIP variant '
                   f'({", ".join(clip.CLIP_VARIANTS)}); FC-CLIP ResNet checkpoints are not supported.')


def check_config(shapes: dict, config, source: str = '<state>') -> None:
  """Raises ValueError when `config`'s model is not the checkpoint's (variant, queries)."""
  variant, queries = infer_layout(shapes, source)
  m = config.model if 'model' in config else config
  if m.clip_variant != variant or m.decoder.num_queries != queries:
    hint = {'convnext_large_d_320': 'configs/ovsnet_large.py', 'convnext_base_w_320': 'configs/ovsnet_base.py'}
    raise ValueError(f'{source}: the checkpoint is CLIP {variant!r} with {queries} queries, the config '
                     f'{m.clip_variant!r} with {m.decoder.num_queries}; use '
                     f'{hint.get(variant, "a config of that CLIP")} with '
                     f'--config.model.decoder.num_queries={queries}.')


def clip_params_from_state(state: dict, variant: str, source: str = '<state>') -> Optional[dict]:
  """The CLIP tree {'visual', 'text', 'logit_scale'} held under ``backbone.clip_model.``, or None
  when the state has no text tower."""
  p = export_torch.CLIP_PREFIX
  if p + 'token_embedding.weight' not in state:
    return None
  sub = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
  ignored = {k for k in sub if k in ('attn_mask',)}  # non-persistent in open_clip, tolerated if present
  return convert_open_clip.convert_state_dict({k: v for k, v in sub.items() if k not in ignored}, variant,
                                              source)


def load(path: str, config) -> tuple[dict, Optional[dict]]:
  """(OVSNet params, CLIP params or None) of an FC-CLIP / exported checkpoint file for `config`.

  Raises:
    ValueError naming the file and the missing / mis-shaped tensor or mismatching config.
  """
  state = read_state(path)
  check_config({k: v.shape for k, v in state.items()}, config, path)
  params = export_torch.import_torch(state, config, source=path)
  m = config.model if 'model' in config else config
  return params, clip_params_from_state(state, m.clip_variant, path)
