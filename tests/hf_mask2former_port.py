"""Copies transformers' Mask2Former PyTorch weights into the ovsnet_jax param trees (tests only).

- ``pixel_decoder_params(Mask2FormerPixelDecoder)`` -> params of ``MSDeformAttnPixelDecoder``.
- ``transformer_params(Mask2FormerTransformerModule)`` -> params of ``MaskedAttentionDecoder``.
- ``randomize_`` gives every weight of a torch module random values (HF only randomises through
  ``PreTrainedModel``; bare modules keep e.g. an uninitialised ``level_embed``).
"""
import numpy as np
import torch


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
  """In place: weights N(0, std), norm scales 1 + N(0, std), everything deterministic in seed."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * std
      is_norm_scale = 'norm' in name and name.endswith('weight') and p.ndim == 1
      p.copy_(1.0 + noise if is_norm_scale else noise)


def _np(t: torch.Tensor) -> np.ndarray:
  return t.detach().cpu().numpy().astype(np.float32)


def dense(linear: torch.nn.Linear) -> dict:
  return {'kernel': _np(linear.weight).T, 'bias': _np(linear.bias)}


def norm(layer: torch.nn.Module) -> dict:
  return {'scale': _np(layer.weight), 'bias': _np(layer.bias)}


def conv(layer: torch.nn.Conv2d) -> dict:
  out = {'kernel': _np(layer.weight).transpose(2, 3, 1, 0)}  # (O, I, kh, kw) -> (kh, kw, I, O)
  if layer.bias is not None:
    out['bias'] = _np(layer.bias)
  return out


def conv_norm(seq: torch.nn.Sequential) -> dict:
  return {'conv': conv(seq[0]), 'norm': norm(seq[1])}


def pixel_decoder_params(pd) -> dict:
  """transformers ``Mask2FormerPixelDecoder`` -> ``MSDeformAttnPixelDecoder`` params."""
  params = {'level_embed': _np(pd.level_embed)}
  for i, proj in enumerate(pd.input_projections):
    params[f'input_proj_{i}'] = conv_norm(proj)
  for j, layer in enumerate(pd.encoder.layers):
    attn = layer.self_attn
    params[f'encoder_layers_{j}'] = {
        'self_attn': {name: dense(getattr(attn, name))
                      for name in ('value_proj', 'sampling_offsets', 'attention_weights', 'output_proj')},
        'norm1': norm(layer.self_attn_layer_norm),
        'linear1': dense(layer.fc1),
        'linear2': dense(layer.fc2),
        'norm2': norm(layer.final_layer_norm),
    }
  params['adapter_1'] = conv_norm(pd.adapter_1)
  params['layer_1'] = conv_norm(pd.layer_1)
  params['mask_features'] = conv(pd.mask_projection)
  return params


def _split_in_proj(mha: torch.nn.MultiheadAttention) -> dict:
  w_q, w_k, w_v = _np(mha.in_proj_weight).reshape(3, mha.embed_dim, mha.embed_dim)
  b_q, b_k, b_v = _np(mha.in_proj_bias).reshape(3, mha.embed_dim)
  return {'q_proj': {'kernel': w_q.T, 'bias': b_q}, 'k_proj': {'kernel': w_k.T, 'bias': b_k},
          'v_proj': {'kernel': w_v.T, 'bias': b_v}, 'out_proj': dense(mha.out_proj)}


def transformer_params(tm) -> dict:
  """transformers ``Mask2FormerTransformerModule`` -> ``MaskedAttentionDecoder`` params."""
  params = {
      'query_feat': _np(tm.queries_features.weight),
      'query_embed': _np(tm.queries_embedder.weight),
      'level_embed': _np(tm.level_embed.weight),
      'decoder_norm': norm(tm.decoder.layernorm),
  }
  for i, proj in enumerate(tm.input_projections):
    if isinstance(proj, torch.nn.Conv2d):
      params[f'input_proj_{i}'] = conv(proj)
  for j, layer in enumerate(tm.decoder.layers):
    self_attn = {name: dense(getattr(layer.self_attn, name))
                 for name in ('q_proj', 'k_proj', 'v_proj', 'out_proj')}
    params[f'layers_{j}'] = {
        'cross_attn': _split_in_proj(layer.cross_attn),
        'cross_norm': norm(layer.cross_attn_layer_norm),
        'self_attn': self_attn,
        'self_norm': norm(layer.self_attn_layer_norm),
        'linear1': dense(layer.fc1),
        'linear2': dense(layer.fc2),
        'ffn_norm': norm(layer.final_layer_norm),
    }
  mlp = tm.decoder.mask_predictor.mask_embedder
  params['mask_embed'] = {f'layers_{i}': dense(block.layers[0]) for i, block in enumerate(mlp.layers)}
  return params
