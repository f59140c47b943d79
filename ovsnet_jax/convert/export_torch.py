"""Export of trained OVSNet params to a PyTorch state dict in FC-CLIP's naming and layouts.

GFA is parameter-free, so a trained OVSNet (fusion 'gfa' or 'none') has exactly the parameters of
bytedance/fc-clip's detectron2 model ``FCCLIP``:

  clip_visual/...            -> backbone.clip_model.visual.*   (open_clip names, convert/open_clip.py)
  clip_logit_scale           -> backbone.clip_model.logit_scale
  pixel_decoder/...          -> sem_seg_head.pixel_decoder.*   (Mask2Former MSDeformAttnPixelDecoder)
  mask_decoder/...           -> sem_seg_head.predictor.*       (fc-clip MultiScaleMaskedTransformerDecoder)
  class_head/pool_norm|proj  -> sem_seg_head.predictor._mask_pooling_proj.{0,1}.*
  class_head/mlp/layers_i    -> sem_seg_head.predictor.class_embed.layers.i.*
  logit_scale                -> sem_seg_head.predictor.logit_scale
  void_embedding (D,)        -> void_embedding.weight (1, D)

Layouts: Dense kernel (in, out) -> Linear weight (out, in); Conv kernel (kh, kw, in, out) -> (out, in,
kh, kw); LayerNorm/GroupNorm scale -> weight; the separate q/k/v projections of the decoder's
attentions -> ``nn.MultiheadAttention``'s packed ``in_proj_weight`` (3C, C) / ``in_proj_bias`` (3C,).

FCCLIP's ``backbone.clip_model`` is the whole open_clip CLIP, text tower included; OVSNet's params do
not hold the text tower (it lives in the converted CLIP directory), so it is exported only when the
CLIP params are passed (``clip_params``). ``criterion.empty_weight`` (a training-loss buffer FCCLIP
rebuilds from its own config) is never exported. Every param of our tree must map to a key: an
unmapped one (e.g. the learned 'self_attn'/'cross_attn' fusion, which FC-CLIP does not have) is an
error naming it.
"""
import errno
import os
import re
from typing import NamedTuple, Optional

import jax
import numpy as np

from ovsnet_jax.convert import open_clip as convert_open_clip
from ovsnet_jax.models import ovsnet

CLIP_PREFIX = 'backbone.clip_model.'
PIXEL_DECODER_PREFIX = 'sem_seg_head.pixel_decoder.'
PREDICTOR_PREFIX = 'sem_seg_head.predictor.'
NOT_EXPORTED = {
    'criterion.empty_weight': 'training-loss class weights (buffer), rebuilt by FCCLIP from its config',
}
_QKV = {'q_proj': 0, 'k_proj': 1, 'v_proj': 2}
_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}

# Module path ('/'-joined, leaf excluded) -> FC-CLIP module name (the leaf is appended as
# '.weight' / '.bias'). First full match wins.
_MODULE_RULES = (
    (r'pixel_decoder/input_proj_(\d+)/conv', PIXEL_DECODER_PREFIX + r'input_proj.\1.0'),
    (r'pixel_decoder/input_proj_(\d+)/norm', PIXEL_DECODER_PREFIX + r'input_proj.\1.1'),
    (r'pixel_decoder/encoder_layers_(\d+)/self_attn/(value_proj|sampling_offsets|attention_weights|output_proj)',
     PIXEL_DECODER_PREFIX + r'transformer.encoder.layers.\1.self_attn.\2'),
    (r'pixel_decoder/encoder_layers_(\d+)/(norm1|norm2|linear1|linear2)',
     PIXEL_DECODER_PREFIX + r'transformer.encoder.layers.\1.\2'),
    (r'pixel_decoder/(adapter_\d+|layer_\d+)/conv', PIXEL_DECODER_PREFIX + r'\1'),
    (r'pixel_decoder/(adapter_\d+|layer_\d+)/norm', PIXEL_DECODER_PREFIX + r'\1.norm'),
    (r'pixel_decoder/mask_features', PIXEL_DECODER_PREFIX + 'mask_features'),
    (r'mask_decoder/decoder_norm', PREDICTOR_PREFIX + 'decoder_norm'),
    (r'mask_decoder/input_proj_(\d+)', PREDICTOR_PREFIX + r'input_proj.\1'),
    (r'mask_decoder/layers_(\d+)/self_attn/out_proj',
     PREDICTOR_PREFIX + r'transformer_self_attention_layers.\1.self_attn.out_proj'),
    (r'mask_decoder/layers_(\d+)/self_norm', PREDICTOR_PREFIX + r'transformer_self_attention_layers.\1.norm'),
    (r'mask_decoder/layers_(\d+)/cross_attn/out_proj',
     PREDICTOR_PREFIX + r'transformer_cross_attention_layers.\1.multihead_attn.out_proj'),
    (r'mask_decoder/layers_(\d+)/cross_norm', PREDICTOR_PREFIX + r'transformer_cross_attention_layers.\1.norm'),
    (r'mask_decoder/layers_(\d+)/(linear1|linear2)', PREDICTOR_PREFIX + r'transformer_ffn_layers.\1.\2'),
    (r'mask_decoder/layers_(\d+)/ffn_norm', PREDICTOR_PREFIX + r'transformer_ffn_layers.\1.norm'),
    (r'mask_decoder/mask_embed/layers_(\d+)', PREDICTOR_PREFIX + r'mask_embed.layers.\1'),
    (r'class_head/pool_norm', PREDICTOR_PREFIX + '_mask_pooling_proj.0'),
    (r'class_head/pool_proj', PREDICTOR_PREFIX + '_mask_pooling_proj.1'),
    (r'class_head/mlp/layers_(\d+)', PREDICTOR_PREFIX + r'class_embed.layers.\1'),
)
# Packed q/k/v: (module path pattern) -> FC-CLIP attention module.
_PACKED_RULES = (
    (r'mask_decoder/layers_(\d+)/self_attn/(q_proj|k_proj|v_proj)',
     PREDICTOR_PREFIX + r'transformer_self_attention_layers.\1.self_attn'),
    (r'mask_decoder/layers_(\d+)/cross_attn/(q_proj|k_proj|v_proj)',
     PREDICTOR_PREFIX + r'transformer_cross_attention_layers.\1.multihead_attn'),
)
# Whole params (no module): path -> (key, layout).
_PARAM_RULES = {
    'pixel_decoder/level_embed': (PIXEL_DECODER_PREFIX + 'transformer.level_embed', 'plain'),
    'mask_decoder/query_feat': (PREDICTOR_PREFIX + 'query_feat.weight', 'plain'),
    'mask_decoder/query_embed': (PREDICTOR_PREFIX + 'query_embed.weight', 'plain'),
    'mask_decoder/level_embed': (PREDICTOR_PREFIX + 'level_embed.weight', 'plain'),
    'logit_scale': (PREDICTOR_PREFIX + 'logit_scale', 'plain'),
    'void_embedding': ('void_embedding.weight', 'row'),
    'clip_logit_scale': (CLIP_PREFIX + 'logit_scale', 'plain'),
}


class Slot(NamedTuple):
  """Where one Flax param goes: torch `key`, `layout` and its `part` of `parts` (packed q/k/v)."""
  key: str
  layout: str  # 'plain' | 'linear' | 'conv' | 'row'
  part: int = 0
  parts: int = 1


def _layout(leaf: str, ndim: int) -> str:
  if leaf == 'kernel':
    return {2: 'linear', 4: 'conv'}.get(ndim, 'plain')
  return 'plain'


def fcclip_slot(path: tuple[str, ...], ndim: int) -> Slot:
  """The FC-CLIP slot of the OVSNet param at `path` (a `ndim`-dimensional array).

  Raises:
    ValueError naming the param when it has no FC-CLIP counterpart.
  """
  name = '/'.join(path)
  if name in _PARAM_RULES:
    return Slot(*_PARAM_RULES[name])
  if path[0] in ('clip_visual', 'clip_text'):
    sub = ('visual' if path[0] == 'clip_visual' else 'text',) + tuple(path[1:])
    return Slot(CLIP_PREFIX + convert_open_clip.torch_key(sub), _layout(path[-1], ndim))
  module, leaf = '/'.join(path[:-1]), path[-1]
  if leaf in _LEAF:
    for pattern, repl in _PACKED_RULES:
      m = re.fullmatch(pattern, module)
      if m:
        prefix = re.sub(f'^{pattern}$', repl, module)
        return Slot(f'{prefix}.in_proj_{_LEAF[leaf]}', _layout(leaf, ndim), _QKV[m.group(2)], 3)
    for pattern, repl in _MODULE_RULES:
      if re.fullmatch(pattern, module):
        return Slot(f'{re.sub(f"^{pattern}$", repl, module)}.{_LEAF[leaf]}', _layout(leaf, ndim))
  hint = (" (model.fusion 'self_attn'/'cross_attn' is a learned fusion FC-CLIP does not have; only 'gfa' and "
          "'none' models export)" if path[0] == 'fusion' else '')
  raise ValueError(f'export_torch: OVSNet param {name!r} has no FC-CLIP counterpart (unmapped){hint}; '
                   'add a rule to ovsnet_jax/convert/export_torch.py or drop the param.')


def to_torch(layout: str, x: np.ndarray) -> np.ndarray:
  """Flax layout -> torch layout."""
  if layout == 'linear':
    return x.T
  if layout == 'conv':
    return np.transpose(x, (3, 2, 0, 1))  # (kh, kw, I, O) -> (O, I, kh, kw)
  if layout == 'row':
    return x[None]
  return x


def from_torch(layout: str, x: np.ndarray) -> np.ndarray:
  """Torch layout -> Flax layout (inverse of `to_torch`)."""
  if layout == 'linear':
    return x.T
  if layout == 'conv':
    return np.transpose(x, (2, 3, 1, 0))
  if layout == 'row':
    return x[0]
  return x


def _flatten(tree: dict) -> list[tuple[tuple[str, ...], object]]:
  return [(tuple(str(getattr(p, 'key', p)) for p in path), leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _with_text(params: dict, clip_params: Optional[dict]) -> dict:
  if clip_params is None:
    return dict(params)
  if 'text' not in clip_params:
    raise ValueError("clip_params: expected the CLIP tree {'visual', 'text', 'logit_scale'}, got keys "
                     f'{sorted(clip_params)}')
  return {**params, 'clip_text': clip_params['text']}


def slots(params: dict) -> dict[tuple[str, ...], Slot]:
  """{Flax path: Slot} for every leaf of `params` (arrays or ShapeDtypeStructs)."""
  out = {path: fcclip_slot(path, len(np.shape(leaf))) for path, leaf in _flatten(params)}
  seen = {}
  for path, s in out.items():
    if (s.key, s.part) in seen:
      raise ValueError(f'export_torch: params {"/".join(seen[s.key, s.part])!r} and {"/".join(path)!r} both '
                       f'map to {s.key!r}')
    seen[s.key, s.part] = path
  return out


def _check_tree(params: dict, config) -> None:
  """Raises ValueError naming the first param missing from, or mis-shaped against, `config`'s model."""
  want = {p: tuple(x.shape) for p, x in _flatten(ovsnet.param_shapes(config))}
  got = {p: tuple(np.shape(x)) for p, x in _flatten(params) if p[0] != 'clip_text'}
  for p, shape in want.items():
    if p not in got:
      raise ValueError(f'export_torch: param {"/".join(p)!r} {shape} of the config\'s model is missing '
                       'from params.')
    if got[p] != shape:
      raise ValueError(f'export_torch: param {"/".join(p)!r} has shape {got[p]}, the config\'s model '
                       f'expects {shape}.')
  extra = sorted('/'.join(p) for p in set(got) - set(want))
  if extra:
    raise ValueError(f'export_torch: params {extra[:5]} are not in the model of this config '
                     f'({len(extra)} in all).')


def export(params: dict, config, clip_params: Optional[dict] = None) -> dict[str, np.ndarray]:
  """OVSNet params -> FC-CLIP state dict {key: float32 numpy array in torch layout}.

  Args:
    params: OVSNet param tree (``ovsnet.init_params`` / a training checkpoint's ``params``).
    config: experiment config (or its ``model`` section) the params belong to.
    clip_params: optional CLIP tree {'visual', 'text', 'logit_scale'}; its ``text`` becomes
      ``backbone.clip_model.{token_embedding, positional_embedding, transformer, ln_final,
      text_projection}`` (FCCLIP's full open_clip model).

  Raises:
    ValueError: a param with no FC-CLIP counterpart (named), or params that do not match `config`.
  """
  full = _with_text(params, clip_params)
  table = slots(full)  # unmapped params fail first, by name
  _check_tree(params, config)
  state, packed = {}, {}
  for path, leaf in _flatten(full):
    s = table[path]
    x = to_torch(s.layout, np.asarray(leaf, np.float32))
    if s.parts == 1:
      state[s.key] = np.array(x, np.float32, order='C')
    else:
      packed.setdefault(s.key, [None] * s.parts)[s.part] = x
  for key, parts in packed.items():
    if any(p is None for p in parts):
      raise ValueError(f'export_torch: packed tensor {key!r}: q/k/v parts missing ({parts.count(None)} of 3)')
    state[key] = np.array(np.concatenate(parts, axis=0), np.float32, order='C')  # (3C, ...)
  return dict(sorted(state.items()))


def torch_shapes(params: dict, clip_params: Optional[dict] = None) -> dict[str, tuple[int, ...]]:
  """{FC-CLIP key: torch shape} that `export` gives for `params` (arrays or ShapeDtypeStructs), no copies."""
  full = _with_text(params, clip_params)
  table, out = slots(full), {}
  for path, leaf in _flatten(full):
    s = table[path]
    shape = to_torch(s.layout, np.broadcast_to(np.float32(0), np.shape(leaf))).shape  # a view: no memory
    out[s.key] = (shape[0] * s.parts,) + shape[1:] if s.parts > 1 else shape
  return dict(sorted(out.items()))


def import_torch(state: dict, config, source: str = '<state>') -> dict:
  """FC-CLIP state dict -> OVSNet params (numpy float32), the inverse of `export`.

  Text-tower keys (``backbone.clip_model.`` keys that are not visual/logit_scale) are ignored;
  everything else must be used and every param filled.

  Raises:
    ValueError naming the missing, unexpected or mis-shaped tensor.
  """
  shapes = ovsnet.param_shapes(config)
  table = slots(shapes)
  shape_of = {p: tuple(x.shape) for p, x in _flatten(shapes)}
  used, params = set(), {}
  for path, s in table.items():
    if s.key not in state:
      raise ValueError(f'{source}: missing tensor {s.key!r} (for OVSNet param {"/".join(path)!r}).')
    x = np.asarray(state[s.key], np.float32)
    if s.parts > 1:
      if x.shape[0] % s.parts:
        raise ValueError(f'{source}: packed tensor {s.key!r} has shape {x.shape}, first axis not a multiple '
                         f'of {s.parts}.')
      n = x.shape[0] // s.parts
      x = x[s.part * n:(s.part + 1) * n]
    x = from_torch(s.layout, x)
    if x.shape != shape_of[path]:
      raise ValueError(f'{source}: tensor {s.key!r} gives shape {x.shape} for OVSNet param '
                       f'{"/".join(path)!r}, expected {shape_of[path]}.')
    used.add(s.key)
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = np.array(x, np.float32, order='C')
  text = {k for k in state if k.startswith(CLIP_PREFIX) and not k.startswith(CLIP_PREFIX + 'visual.')}
  extra = sorted(set(state) - used - text - set(NOT_EXPORTED))
  if extra:
    raise ValueError(f'{source}: unexpected tensors {extra[:5]} ({len(extra)} in all) not used by the OVSNet '
                     'model of this config.')
  return params


def sidecar_path(out: str) -> str:
  """`model.safetensors` / `model.pth` -> `model.json`."""
  return os.path.splitext(out)[0] + '.json'


def metadata(state: dict, config, checkpoint: str = '', step: Optional[int] = None) -> dict:
  """The JSON sidecar: OVSNet hyper-parameters (GFA, fusion, ensemble, ...), provenance, key list."""
  m = ovsnet.model_config(config)
  has_text = any(k.startswith(CLIP_PREFIX + 'token_embedding') for k in state)
  return {
      'format': 'fcclip_state_dict', 'exporter': 'ovsnet_jax.convert.export_torch',
      'clip_variant': m.clip_variant, 'includes_text_tower': has_text,
      'not_exported': {**NOT_EXPORTED, **({} if has_text else {
          CLIP_PREFIX + '<text tower>': 'not in OVSNet params; pass --clip=CLIP_DIR to include it'})},
      'fusion': m.fusion, 'gfa': m.gfa.to_dict(), 'ensemble': m.ensemble.to_dict(),
      'model': m.to_dict(), 'checkpoint': checkpoint, 'step': step,
      'keys': {k: list(v.shape) for k, v in state.items()},
  }


def _atomic_write(path: str, write) -> None:
  """Calls `write(tmp_path)` on a temporary sibling of `path`, then renames it to `path`.

  A failed write (full or read-only disk) leaves no file and raises `atomic_io.OutputError`
  naming `path`.
  """
  from ovsnet_jax import atomic_io  # pylint: disable=g-import-not-at-top
  with atomic_io.path_atomic(path) as tmp:
    try:
      write(tmp)
    except OSError:
      raise
    except Exception as e:  # pylint: disable=broad-except (safetensors/torch wrap I/O errors in their own types)
      raise atomic_io.OutputError(errno.EIO, f'cannot write {path}: {type(e).__name__}: {e}') from e


def save(state: dict, meta: dict, out: str, overwrite: bool = False) -> tuple[str, str]:
  """Writes `state` (safetensors, or `torch.save` of a tensor dict for .pth/.pt) and its sidecar.

  Both files are written to temporary siblings and renamed; nothing is replaced unless `overwrite`.

  Returns:
    (weights path, sidecar path).
  """
  out = os.path.abspath(out)
  ext = os.path.splitext(out)[1]
  if ext not in ('.safetensors', '.pth', '.pt'):
    raise ValueError(f'--out {out!r}: expected a .safetensors, .pth or .pt file name.')
  side = sidecar_path(out)
  for path in (out, side):
    if os.path.exists(path) and not overwrite:
      raise FileExistsError(f'{path!r} exists; pass --overwrite to replace it.')
  arrays = {k: np.array(v, np.float32, order='C') for k, v in state.items()}
  if ext == '.safetensors':  # no torch needed
    from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
    _atomic_write(out, lambda p: st_numpy.save_file(arrays, p, metadata={'format': 'pt'}))
  else:
    import torch  # pylint: disable=g-import-not-at-top
    _atomic_write(out, lambda p: torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, p))
  meta = {**meta, 'weights': os.path.basename(out)}

  from ovsnet_jax import atomic_io  # pylint: disable=g-import-not-at-top
  atomic_io.write_json(meta, side, indent=1)
  return out, side


def load_state(path: str) -> dict[str, np.ndarray]:
  """Reads an exported file back ({key: numpy array}); .safetensors or a torch tensor dict."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path!r} does not exist.')
  if path.endswith('.safetensors'):
    from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
    return dict(st_numpy.load_file(path))
  import torch  # pylint: disable=g-import-not-at-top
  return {k: v.numpy() for k, v in torch.load(path, map_location='cpu', weights_only=True).items()}


def load_checkpoint_params(path: str) -> tuple[dict, int]:
  """(params, step) of a training workdir, its `checkpoints/` or one `checkpoints/<step>` folder."""
  from ovsnet_jax import evaluate  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(path):
    raise FileNotFoundError(f'--checkpoint {path!r}: directory does not exist (expected a training workdir, '
                            'its checkpoints/ folder or a checkpoints/<step> folder).')
  step_dir = evaluate.checkpoint_step_dir(os.path.abspath(path))
  step = int(os.path.basename(step_dir)) if os.path.basename(step_dir).isdigit() else None
  return jax.tree.map(np.asarray, evaluate.load_params(step_dir)), step


def export_checkpoint(config, checkpoint: str, out: str, clip_dir: str = '',
                      overwrite: bool = False) -> tuple[str, str]:
  """Checkpoint -> FC-CLIP weights file + sidecar (the `launch/export_torch.py` entry point)."""
  out = os.path.abspath(out)
  for path in (out, sidecar_path(out)):
    if os.path.exists(path) and not overwrite:  # fail before the (long) restore
      raise FileExistsError(f'{path!r} exists; pass --overwrite to replace it.')
  params, step = load_checkpoint_params(checkpoint)
  clip_params = None
  if clip_dir:
    variant, clip_params = convert_open_clip.load_clip_checkpoint(clip_dir)
    if variant != ovsnet.model_config(config).clip_variant:
      raise ValueError(f'--clip {clip_dir!r} holds CLIP {variant!r}, the config uses '
                       f'{ovsnet.model_config(config).clip_variant!r}.')
    same = jax.tree.map(lambda a, b: np.shape(a) == np.shape(b) and np.array_equal(a, b),
                        clip_params['visual'], params['clip_visual'])
    if not all(jax.tree.leaves(same)):
      raise ValueError(f'--clip {clip_dir!r}: its image tower differs from the checkpoint\'s frozen '
                       "clip_visual; pass the CLIP directory the model was trained with.")
  state = export(params, config, clip_params)
  return save(state, metadata(state, config, os.path.abspath(checkpoint), step), out, overwrite)
