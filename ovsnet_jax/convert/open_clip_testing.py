"""Real open_clip checkpoints of our reduced test CLIPs (`test_tiny`, `test_tiny_mlp`).

`register_test_variant(name, config_dir)` (or `register_test_tiny`) makes
`open_clip.create_model(name)` work through open_clip's own model-config mechanism (a JSON file
added with `open_clip.add_model_config`); the image trunk is a timm ConvNeXt registered in timm's
model registry under `CLIP_VARIANTS[name].timm_name`. `save_open_clip_weights` writes a model's
state dict exactly as open_clip publishes weights (`save_for_hf`: `open_clip_model.safetensors`
and `open_clip_pytorch_model.bin`).

Needs torch, timm and open_clip (test-time dependencies only).
"""
import json
import os

from ovsnet_jax.models import clip

SAFETENSORS_NAME = 'open_clip_model.safetensors'  # open_clip.constants.HF_SAFE_WEIGHTS_NAME
BIN_NAME = 'open_clip_pytorch_model.bin'  # open_clip.constants.HF_WEIGHTS_NAME


def open_clip_config(variant_name: str) -> dict:
  """The open_clip model config (model_configs/*.json schema) of one of our variants."""
  v = clip.get_variant(variant_name)
  return {
      'embed_dim': v.embed_dim,
      'quick_gelu': v.text_act == 'quick_gelu',
      'vision_cfg': {
          'timm_model_name': v.timm_name, 'timm_model_pretrained': False, 'timm_pool': '',
          'timm_proj': v.head, 'timm_drop': 0.0, 'timm_drop_path': 0.0, 'image_size': 64,
      },
      'text_cfg': {
          'context_length': v.context_length, 'vocab_size': v.vocab_size,
          'width': v.text_width, 'heads': v.text_heads, 'layers': v.text_layers,
      },
  }


def _register_timm_convnext(variant_name: str) -> None:
  """Registers the variant's ConvNeXt in timm (idempotent)."""
  import timm  # pylint: disable=g-import-not-at-top
  from timm.models import convnext  # pylint: disable=g-import-not-at-top
  v = clip.get_variant(variant_name)
  if timm.is_model(v.timm_name):
    return

  def build(pretrained: bool = False, **kwargs):
    if pretrained:
      raise ValueError(f'{v.timm_name} has no pretrained weights.')
    kwargs['pretrained_cfg'] = kwargs.get('pretrained_cfg') or {'architecture': v.timm_name}
    return timm.models.build_model_with_cfg(
        convnext.ConvNeXt, v.timm_name, pretrained=False, depths=v.depths, dims=v.widths,
        **kwargs)

  build.__name__ = v.timm_name
  build.__module__ = convnext.__name__
  timm.models.register_model(build)


def register_test_variant(name: str, config_dir: str) -> str:
  """Registers one of our test variants in open_clip (config JSON written to `config_dir`) and timm.

  Idempotent. Returns the open_clip model name (= `name`).
  """
  import open_clip  # pylint: disable=g-import-not-at-top
  _register_timm_convnext(name)
  if name not in open_clip.list_models():
    os.makedirs(config_dir, exist_ok=True)
    path = os.path.join(config_dir, f'{name}.json')
    with open(path, 'w') as f:
      json.dump(open_clip_config(name), f, indent=2)
    open_clip.add_model_config(path)
  return name


def register_test_tiny(config_dir: str) -> str:
  """Registers `test_tiny` in open_clip and timm (idempotent); returns 'test_tiny'."""
  return register_test_variant('test_tiny', config_dir)


def perturb_norms_and_scales(model, seed: int = 0, gamma_std: float = 0.3) -> None:
  """Randomises every LayerNorm affine and ConvNeXt layer-scale `gamma` of a torch CLIP in place.

  open_clip's init sets LayerNorm to (1, 0) and gamma to 1e-6, which would make the ConvNeXt
  blocks near-identities; parity tests perturb them so that every param matters.
  """
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if name.endswith('gamma'):
        p.copy_(gamma_std * noise)
      elif p.ndim == 1 and ('norm' in name or 'ln_' in name or '.stem.1.' in name
                            or '.downsample.0.' in name):
        p.copy_(0.2 * noise + (1.0 if name.endswith('weight') else 0.0))


def save_open_clip_weights(model, out_dir: str,
                           formats: tuple[str, ...] = ('safetensors', 'bin')) -> dict[str, str]:
  """Writes `model.state_dict()` as open_clip's `save_for_hf` does, in the given `formats`.

  Returns:
    {format: path} for 'safetensors' and/or 'bin'.
  """
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  tensors = model.state_dict()
  paths = {}
  if 'safetensors' in formats:
    paths['safetensors'] = os.path.join(out_dir, SAFETENSORS_NAME)
    safetensors.torch.save_file(tensors, paths['safetensors'])
  if 'bin' in formats:
    paths['bin'] = os.path.join(out_dir, BIN_NAME)
    torch.save(tensors, paths['bin'])
  return paths
