"""Mask pooling: average a feature map inside each predicted (binarised) mask.

FC-CLIP / ODISE ``MaskPooling``: the mask logits are resized to the feature grid (bilinear,
``align_corners=False``), binarised at logit > 0 and detached; features are averaged inside each
mask (sum / (count + 1e-8)), so gradients reach the features but never the masks. An empty mask
pools to the zero vector.
"""
import jax
import jax.numpy as jnp

POOL_EPS = 1e-8


def resize_mask_logits(mask_logits: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize of mask logits, PyTorch ``align_corners=False`` semantics, no antialiasing.

  Args:
    mask_logits: (B, Q, H', W').
    size: target (h, w).

  Returns:
    (B, Q, h, w) in the input dtype.
  """
  if mask_logits.ndim != 4:
    raise ValueError(f'mask_logits: expected (B, Q, H, W), got shape {mask_logits.shape}')
  b, q, hh, ww = mask_logits.shape
  if (hh, ww) == tuple(size):
    return mask_logits
  return jax.image.resize(mask_logits, (b, q, *size), method='bilinear', antialias=False)


def binary_masks(mask_logits: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Masks resized to ``size`` and binarised at logit > 0, under stop_gradient.

  Args:
    mask_logits: (B, Q, H', W') logits.
    size: feature grid (h, w).

  Returns:
    (B, Q, h, w) float32 in {0, 1}.
  """
  masks = resize_mask_logits(jax.lax.stop_gradient(mask_logits).astype(jnp.float32), size)
  return (masks > 0).astype(jnp.float32)


def mask_pool(features: jax.Array, mask_logits: jax.Array) -> jax.Array:
  """Average of ``features`` inside each binarised mask.

  Args:
    features: (B, h, w, C) NHWC feature map.
    mask_logits: (B, Q, H', W') mask logits at any resolution.

  Returns:
    (B, Q, C) float32 pooled features; zero for masks with no positive pixel.
  """
  if features.ndim != 4:
    raise ValueError(f'features: expected (B, h, w, C), got shape {features.shape}')
  if mask_logits.ndim != 4 or mask_logits.shape[0] != features.shape[0]:
    raise ValueError(f'mask_logits: expected (B={features.shape[0]}, Q, H, W), got shape {mask_logits.shape}')
  masks = binary_masks(mask_logits, features.shape[1:3])  # (B, Q, h, w)
  count = masks.sum(axis=(-2, -1))[..., None]  # (B, Q, 1)
  pooled = jnp.einsum('bqhw,bhwc->bqc', masks, features.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)  # (B, Q, C)
  return pooled / (count + POOL_EPS)


def mask_has_pixels(mask_logits: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Whether each mask keeps at least one positive pixel on the ``size`` grid.

  Args:
    mask_logits: (B, Q, H', W').
    size: (h, w).

  Returns:
    (B, Q) bool.
  """
  return binary_masks(mask_logits, size).sum(axis=(-2, -1)) > 0
