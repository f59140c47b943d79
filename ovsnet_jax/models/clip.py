"""CLIP variants and the two-tower CLIP module (frozen ConvNeXt image tower + text tower).

The variants mirror open_clip's model configs (`open_clip/model_configs/<name>.json`): a timm
ConvNeXt trunk with open_clip's projection head, and open_clip's text transformer.

Param tree of `CLIP(variant)`: `{'visual': ..., 'text': ..., 'logit_scale': ()}` (`visual` is
absent for text-only variants such as `ViT-L-14`).
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovsnet_jax.models import clip_convnext
from ovsnet_jax.models import clip_text


@dataclasses.dataclass(frozen=True)
class CLIPVariant:
  """Architecture of one CLIP model.

  Attributes:
    widths: ConvNeXt stage widths (C2, C3, C4, C5); empty for text-only variants.
    depths: ConvNeXt blocks per stage; empty for text-only variants.
    embed_dim: D, the joint image-text embedding width.
    head: image projection after the head LayerNorm: 'linear' (C5 -> D, no bias),
      'mlp' (C5 -> 2D -> D, GELU, bias only on the first layer) or 'none' (no image tower).
    text_width: text transformer width.
    text_heads: attention heads of the text transformer.
    text_layers: residual attention blocks of the text transformer.
    vocab_size: BPE vocabulary size.
    context_length: tokens per prompt.
    text_act: MLP activation of the text blocks: 'gelu' (exact) or 'quick_gelu' (OpenAI weights).
    timm_name: timm model the open_clip image trunk is built from ('' for text-only variants).
  """
  widths: tuple[int, ...]
  depths: tuple[int, ...]
  embed_dim: int
  head: str
  text_width: int
  text_heads: int
  text_layers: int
  vocab_size: int = 49408
  context_length: int = 77
  text_act: str = 'gelu'
  timm_name: str = ''

  @property
  def has_visual(self) -> bool:
    return self.head != 'none'


CLIP_VARIANTS: dict[str, CLIPVariant] = {
    'convnext_base_w_320': CLIPVariant(
        widths=(128, 256, 512, 1024), depths=(3, 3, 27, 3), embed_dim=640, head='linear',
        text_width=640, text_heads=10, text_layers=12, timm_name='convnext_base'),
    'convnext_large_d_320': CLIPVariant(
        widths=(192, 384, 768, 1536), depths=(3, 3, 27, 3), embed_dim=768, head='mlp',
        text_width=768, text_heads=12, text_layers=16, timm_name='convnext_large'),
    # OpenAI CLIP ViT-L/14: text tower only (OpenBench tools); OpenAI weights use QuickGELU.
    'ViT-L-14': CLIPVariant(
        widths=(), depths=(), embed_dim=768, head='none',
        text_width=768, text_heads=12, text_layers=12, text_act='quick_gelu'),
    # Reduced widths for fast tests; registered in open_clip/timm by
    # `ovsnet_jax.convert.open_clip_testing.register_test_variant`.
    'test_tiny': CLIPVariant(
        widths=(16, 32, 64, 128), depths=(1, 1, 2, 1), embed_dim=32, head='linear',
        text_width=32, text_heads=2, text_layers=2, timm_name='ovsnet_test_tiny_convnext'),
    # test_tiny with the 'mlp' image head (as convnext_large_d_320) and QuickGELU text blocks.
    'test_tiny_mlp': CLIPVariant(
        widths=(16, 32, 64, 128), depths=(1, 1, 2, 1), embed_dim=32, head='mlp',
        text_width=32, text_heads=2, text_layers=2, text_act='quick_gelu',
        timm_name='ovsnet_test_tiny_convnext'),
}


def get_variant(name: str) -> CLIPVariant:
  """Returns the `CLIPVariant` called `name`, or raises a ValueError listing the known ones."""
  if name not in CLIP_VARIANTS:
    raise ValueError(f'Unknown CLIP variant {name!r}; expected one of {sorted(CLIP_VARIANTS)}.')
  return CLIP_VARIANTS[name]


class CLIP(nn.Module):
  """open_clip's CLIP: ConvNeXt image tower, text transformer and the logit scale.

  Attributes:
    variant: a key of `CLIP_VARIANTS`.
    dtype: compute dtype of the matmuls/convolutions (params stay float32).
  """
  variant: str
  dtype: Any = jnp.float32

  def setup(self):
    v = get_variant(self.variant)
    if v.has_visual:
      self.visual = clip_convnext.CLIPVisual(self.variant, dtype=self.dtype)
    self.text = clip_text.CLIPText(self.variant, dtype=self.dtype)
    self.logit_scale = self.param(
        'logit_scale', lambda _: jnp.asarray(np.log(1 / 0.07), jnp.float32))

  def encode_image(self, images: jax.Array) -> jax.Array:
    """(B, H, W, 3) CLIP-normalised images -> (B, D) embeddings, not normalised."""
    return self.visual.embed_image(images)

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    """(N, 77) int32 tokens -> (N, D) embeddings, not normalised."""
    return self.text(tokens)

  def __call__(self, images: Optional[jax.Array], tokens: jax.Array):
    """Embeds both modalities (init with images to create the image-tower params).

    Args:
      images: (B, H, W, 3) CLIP-normalised images, or None (text only).
      tokens: (N, 77) int32.

    Returns:
      (image_embeds (B, D) or None, text_embeds (N, D), logit_scale ()).
    """
    image_embeds = None
    if images is not None:
      if not get_variant(self.variant).has_visual:
        raise ValueError(f'CLIP variant {self.variant!r} is text-only: pass images=None.')
      image_embeds = self.encode_image(images)
    return image_embeds, self.encode_text(tokens), self.logit_scale


def init_params(variant: str, rng: jax.Array, image_size: int = 64) -> dict:
  """Randomly initialised CLIP params (float32) of `variant`."""
  model = CLIP(variant)
  images = None
  if get_variant(variant).has_visual:
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  tokens = jnp.zeros((1, get_variant(variant).context_length), jnp.int32)
  return model.init(rng, images, tokens)['params']


def param_shapes(variant: str) -> dict:
  """The CLIP param tree of `variant` as `jax.ShapeDtypeStruct`s (no compute, no memory)."""
  return jax.eval_shape(lambda: init_params(variant, jax.random.PRNGKey(0)))
