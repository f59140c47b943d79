"""Export of OVSNet params to FC-CLIP's PyTorch state dict (ovsnet_jax/convert/export_torch.py).

(a) the key/shape list for the full convnext_base_w_320 model equals FC-CLIP-B's, written below as
data from bytedance/fc-clip's module definitions; (b) export -> file -> import is bit-exact, also from a
real orbax training checkpoint through `export_checkpoint`; (c) the CLIP part loads strictly into
open_clip's own `test_tiny` model and gives our image features; (d) the decoder parts load strictly
into transformers' Mask2Former modules (the inverse of tests/hf_mask2former_port.py) and give our
outputs; (e) errors. Params are random (shapes from `jax.eval_shape` of the real init): no init compute.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Mask2FormerConfig
from transformers.models.mask2former import modeling_mask2former as hf

import hf_mask2former_port as port
from configs import common
from configs import smoke
from ovsnet_jax import checkpointing
from ovsnet_jax.convert import export_torch as et
from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.models import clip
from ovsnet_jax.models import clip_convnext
from ovsnet_jax.models import mask_decoder
from ovsnet_jax.models import ovsnet
from ovsnet_jax.models import pixel_decoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- (a) FC-CLIP-B's state dict, from fc-clip's modules: FCCLIP.backbone.clip_model = open_clip
# 'convnext_base_w_320' (timm convnext_base trunk, linear head, no bias), sem_seg_head.pixel_decoder =
# MSDeformAttnPixelDecoder (conv_dim = mask_dim = 256, GroupNorm, 6 encoder layers, 8 heads, 3 levels,
# 4 points, FFN 1024, one FPN level 'adapter_1'/'layer_1' on res2), sem_seg_head.predictor =
# MultiScaleMaskedTransformerDecoder (DEC_LAYERS 10 -> 9 layers, 100 queries, hidden 256, FFN 2048,
# no input_proj since 256 == 256, mask_embed MLP x3, _mask_pooling_proj LN + Linear, class_embed MLP
# 256 -> 640, logit_scale), void_embedding = nn.Embedding(1, 640). Symbols: d stage width, p previous
# width, 4d MLP width; other entries are literal.
DIMS, DEPTHS = (128, 256, 512, 1024), (3, 3, 27, 3)
STEM = {'stem.0.weight': ('d', 3, 4, 4), 'stem.0.bias': ('d',), 'stem.1.weight': ('d',), 'stem.1.bias': ('d',)}
DOWNSAMPLE = {'downsample.0.weight': ('p',), 'downsample.0.bias': ('p',),
              'downsample.1.weight': ('d', 'p', 2, 2), 'downsample.1.bias': ('d',)}
BLOCK = {'gamma': ('d',), 'conv_dw.weight': ('d', 1, 7, 7), 'conv_dw.bias': ('d',), 'norm.weight': ('d',),
         'norm.bias': ('d',), 'mlp.fc1.weight': ('4d', 'd'), 'mlp.fc1.bias': ('4d',),
         'mlp.fc2.weight': ('d', '4d'), 'mlp.fc2.bias': ('d',)}
VISUAL_HEAD = {'trunk.head.norm.weight': (1024,), 'trunk.head.norm.bias': (1024,), 'head.proj.weight': (640, 1024)}
TEXT = {'token_embedding.weight': (49408, 640), 'positional_embedding': (77, 640), 'ln_final.weight': (640,),
        'ln_final.bias': (640,), 'text_projection': (640, 640)}
TEXT_BLOCK = {'ln_1.weight': (640,), 'ln_1.bias': (640,), 'attn.in_proj_weight': (1920, 640),
              'attn.in_proj_bias': (1920,), 'attn.out_proj.weight': (640, 640), 'attn.out_proj.bias': (640,),
              'ln_2.weight': (640,), 'ln_2.bias': (640,), 'mlp.c_fc.weight': (2560, 640), 'mlp.c_fc.bias': (2560,),
              'mlp.c_proj.weight': (640, 2560), 'mlp.c_proj.bias': (640,)}
ENCODER_LAYER = {
    'self_attn.sampling_offsets.weight': (192, 256), 'self_attn.sampling_offsets.bias': (192,),  # 8*3*4*2
    'self_attn.attention_weights.weight': (96, 256), 'self_attn.attention_weights.bias': (96,),  # 8*3*4
    'self_attn.value_proj.weight': (256, 256), 'self_attn.value_proj.bias': (256,),
    'self_attn.output_proj.weight': (256, 256), 'self_attn.output_proj.bias': (256,),
    'norm1.weight': (256,), 'norm1.bias': (256,), 'linear1.weight': (1024, 256), 'linear1.bias': (1024,),
    'linear2.weight': (256, 1024), 'linear2.bias': (256,), 'norm2.weight': (256,), 'norm2.bias': (256,)}
PIXEL_DECODER = {
    **{f'input_proj.{i}.{k}': s for i, c in enumerate((1024, 512, 256)) for k, s in (
        ('0.weight', (256, c, 1, 1)), ('0.bias', (256,)), ('1.weight', (256,)), ('1.bias', (256,)))},
    'transformer.level_embed': (3, 256), 'mask_features.weight': (256, 256, 1, 1), 'mask_features.bias': (256,),
    'adapter_1.weight': (256, 128, 1, 1), 'adapter_1.norm.weight': (256,), 'adapter_1.norm.bias': (256,),
    'layer_1.weight': (256, 256, 3, 3), 'layer_1.norm.weight': (256,), 'layer_1.norm.bias': (256,)}
ATTN = {'in_proj_weight': (768, 256), 'in_proj_bias': (768,), 'out_proj.weight': (256, 256), 'out_proj.bias': (256,)}
NORM = {'norm.weight': (256,), 'norm.bias': (256,)}
FFN = {'linear1.weight': (2048, 256), 'linear1.bias': (2048,), 'linear2.weight': (256, 2048), 'linear2.bias': (256,),
       **NORM}
PREDICTOR = {
    'decoder_norm.weight': (256,), 'decoder_norm.bias': (256,), 'query_feat.weight': (100, 256),
    'query_embed.weight': (100, 256), 'level_embed.weight': (3, 256),
    **{f'mask_embed.layers.{i}.{k}': s for i in range(3) for k, s in (('weight', (256, 256)), ('bias', (256,)))},
    '_mask_pooling_proj.0.weight': (256,), '_mask_pooling_proj.0.bias': (256,),
    '_mask_pooling_proj.1.weight': (256, 256), '_mask_pooling_proj.1.bias': (256,),
    'class_embed.layers.0.weight': (256, 256), 'class_embed.layers.0.bias': (256,),
    'class_embed.layers.1.weight': (256, 256), 'class_embed.layers.1.bias': (256,),
    'class_embed.layers.2.weight': (640, 256), 'class_embed.layers.2.bias': (640,), 'logit_scale': ()}


def _sym(shape, d, p):
  return tuple({'d': d, 'p': p, '4d': 4 * d}.get(s, s) if isinstance(s, str) else s for s in shape)


def fcclip_b_keys(with_text: bool) -> dict:
  clip_m, out = 'backbone.clip_model.', {}
  out.update({f'{clip_m}visual.trunk.{k}': _sym(s, DIMS[0], 0) for k, s in STEM.items()})
  for i, (d, n) in enumerate(zip(DIMS, DEPTHS)):
    stage = f'{clip_m}visual.trunk.stages.{i}.'
    if i:
      out.update({stage + k: _sym(s, d, DIMS[i - 1]) for k, s in DOWNSAMPLE.items()})
    out.update({f'{stage}blocks.{j}.{k}': _sym(s, d, 0) for j in range(n) for k, s in BLOCK.items()})
  out.update({f'{clip_m}visual.{k}': s for k, s in VISUAL_HEAD.items()})
  out[f'{clip_m}logit_scale'] = ()
  if with_text:
    out.update({clip_m + k: s for k, s in TEXT.items()})
    out.update({f'{clip_m}transformer.resblocks.{j}.{k}': s for j in range(12) for k, s in TEXT_BLOCK.items()})
  pd, pred = 'sem_seg_head.pixel_decoder.', 'sem_seg_head.predictor.'
  out.update({pd + k: s for k, s in PIXEL_DECODER.items()})
  out.update({f'{pd}transformer.encoder.layers.{j}.{k}': s for j in range(6) for k, s in ENCODER_LAYER.items()})
  for j in range(9):
    out.update({f'{pred}transformer_self_attention_layers.{j}.self_attn.{k}': s for k, s in ATTN.items()})
    out.update({f'{pred}transformer_self_attention_layers.{j}.{k}': s for k, s in NORM.items()})
    out.update({f'{pred}transformer_cross_attention_layers.{j}.multihead_attn.{k}': s for k, s in ATTN.items()})
    out.update({f'{pred}transformer_cross_attention_layers.{j}.{k}': s for k, s in NORM.items()})
    out.update({f'{pred}transformer_ffn_layers.{j}.{k}': s for k, s in FFN.items()})
  out.update({pred + k: s for k, s in PREDICTOR.items()})
  out['void_embedding.weight'] = (1, 640)
  return out


@pytest.mark.parametrize('with_text', [False, True])
def test_full_base_model_keys_and_shapes_match_fcclip(with_text):
  config = common.get_base_config()
  assert config.model.clip_variant == 'convnext_base_w_320' and config.model.decoder.num_queries == 100
  shapes = ovsnet.param_shapes(config)
  text = clip.param_shapes('convnext_base_w_320') if with_text else None
  got, want = et.torch_shapes(shapes, text), fcclip_b_keys(with_text)
  assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
  assert {k: v for k, v in got.items() if want[k] != v} == {}
  assert len(want) == (795 if with_text else 795 - 5 - 12 * 12)


# ---- shared helpers: random params in the real tree (no init compute) -------------------------


def tiny_config(**pixel_decoder):
  c = smoke.get_config()
  c.model.pixel_decoder.update(pixel_decoder)
  return c


def random_params(config, seed=0, std=0.2):
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(ovsnet.param_shapes(config))

  def draw(path, leaf):
    x = rng.normal(size=leaf.shape).astype(np.float32) * std
    is_scale = str(getattr(path[-1], 'key', '')) == 'scale'
    return x + 1.0 if is_scale else x
  return jax.tree_util.tree_unflatten(treedef, [draw(p, l) for p, l in leaves])


def read_json(path):
  with open(path) as f:
    return json.load(f)


def assert_trees_equal(a, b):
  flat_a = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(a)[0]}
  flat_b = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(b)[0]}
  assert sorted(flat_a) == sorted(flat_b)
  for k, x in flat_a.items():
    assert np.asarray(x).dtype == np.asarray(flat_b[k]).dtype == np.float32, k
    np.testing.assert_array_equal(np.asarray(x), np.asarray(flat_b[k]), err_msg=k)


# ---- (b) round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
def test_round_trip_through_file_is_bit_exact(tmp_path, suffix):
  config = tiny_config()
  params = random_params(config)
  state = et.export(params, config)
  assert {k: v.shape for k, v in state.items()} == et.torch_shapes(params)
  q = state['sem_seg_head.predictor.transformer_cross_attention_layers.1.multihead_attn.in_proj_weight']
  np.testing.assert_array_equal(q[32:64], params['mask_decoder']['layers_1']['cross_attn']['k_proj']['kernel'].T)
  weights, side = et.save(state, et.metadata(state, config), str(tmp_path / f'model{suffix}'))
  assert side == str(tmp_path / 'model.json')
  loaded = et.load_state(weights)
  assert sorted(loaded) == sorted(state)
  assert_trees_equal(et.import_torch(loaded, config, source=weights), params)
  meta = read_json(side)
  assert meta['keys'] == {k: list(v.shape) for k, v in state.items()}
  assert meta['gfa']['lam'] == 0.2 and meta['gfa']['omega'] == 0.5 and meta['gfa']['norm'] == 'softmax'
  assert meta['fusion'] == 'gfa' and meta['weights'] == f'model{suffix}' and not meta['includes_text_tower']
  assert sorted(os.listdir(tmp_path)) == sorted([f'model{suffix}', 'model.json'])  # no temp files left


def write_checkpoint(workdir, params, step):
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), every=1, keep=1, async_save=False)
  ckpt.save(step, {'step': np.int32(step), 'params': params, 'opt_state': {'mu': params['logit_scale']}},
            jax.random.PRNGKey(0), {'next_index': step}, force=True)  # the data state is required
  ckpt.close()


def test_cli_exports_orbax_training_checkpoint(tmp_path, tiny_clip_dir):
  config = tiny_config()
  _, clip_params = convert.load_clip_checkpoint(tiny_clip_dir)
  params = {**random_params(config, seed=3), 'clip_visual': clip_params['visual']}
  write_checkpoint(str(tmp_path / 'work'), params, 7)
  out = tmp_path / 'out' / 'm.safetensors'
  cmd = [sys.executable, os.path.join(ROOT, 'launch', 'export_torch.py'),
         '--config=' + os.path.join(ROOT, 'configs', 'smoke.py'), f'--checkpoint={tmp_path / "work"}',
         f'--out={out}', f'--clip={tiny_clip_dir}']
  run = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=str(tmp_path))
  assert run.returncode == 0, run.stderr[-2000:]
  assert f'wrote {out}' in run.stdout
  state = et.load_state(str(out))
  assert_trees_equal(et.import_torch(state, config), params)  # text-tower keys are ignored on import
  meta = read_json(tmp_path / 'out' / 'm.json')
  assert meta['step'] == 7 and meta['checkpoint'] == str(tmp_path / 'work') and meta['includes_text_tower']
  assert 'backbone.clip_model.token_embedding.weight' in state and len(meta['keys']) == len(state)
  again = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=str(tmp_path))
  assert again.returncode == 2 and 'Traceback' not in again.stderr  # cli.EXIT_USER_ERROR, one line
  assert f"export_torch: '{out}' exists; pass --overwrite to replace it." in again.stderr
  write_checkpoint(str(tmp_path / 'other'), random_params(config, seed=4), 3)  # trained with another CLIP
  with pytest.raises(ValueError, match=r"image tower differs from the checkpoint's frozen clip_visual"):
    et.export_checkpoint(config, str(tmp_path / 'other'), str(tmp_path / 'o.pth'), clip_dir=tiny_clip_dir)


def test_failed_write_leaves_nothing(tmp_path):
  def write(path):
    with open(path, 'wb') as f:
      f.write(b'partial')
    raise OSError('disk full')
  with pytest.raises(OSError, match='disk full'):
    et._atomic_write(str(tmp_path / 'model.safetensors'), write)  # pylint: disable=protected-access
  assert os.listdir(tmp_path) == []


# ---- (c) CLIP part in open_clip's own model -----------------------------------------------------


def test_clip_part_loads_strictly_into_open_clip(tiny_clip_checkpoint, tiny_clip_dir):
  import open_clip  # pylint: disable=g-import-not-at-top
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  _, clip_params = convert.load_clip_checkpoint(tiny_clip_dir)
  params = {**random_params(config), 'clip_visual': clip_params['visual'],
            'clip_logit_scale': clip_params['logit_scale']}
  state = et.export(params, config, clip_params)
  prefix = 'backbone.clip_model.'
  clip_state = {k[len(prefix):]: torch.from_numpy(v) for k, v in state.items() if k.startswith(prefix)}
  original = safetensors.torch.load_file(tiny_clip_checkpoint['safetensors'])
  assert sorted(clip_state) == sorted(original)  # visual + text + logit_scale, nothing else
  for k, v in original.items():
    np.testing.assert_array_equal(clip_state[k].numpy(), v.numpy(), err_msg=k)
  model = open_clip.create_model(tiny_clip_checkpoint['model_name'], pretrained=None).eval()
  visual = {k[len('visual.'):]: v for k, v in clip_state.items() if k.startswith('visual.')}
  model.visual.load_state_dict(visual, strict=True)
  model.load_state_dict(clip_state, strict=True)
  images = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype(np.float32)
  with torch.no_grad():
    want = model.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  with jax.default_matmul_precision('highest'):
    got = jax.jit(lambda p, x: clip_convnext.CLIPVisual('test_tiny').apply(p, x, method='embed_image'))(
        {'params': params['clip_visual']}, images)
  got = np.asarray(got)
  assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)  # measured 7e-7 of the largest entry
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# ---- (d) decoder parts in transformers' Mask2Former modules -------------------------------------
# FC-CLIP (Mask2Former) name -> transformers name: the inverse of hf_mask2former_port at the torch level.
PD_TO_HF = (('transformer.level_embed', 'level_embed'), ('input_proj.', 'input_projections.'),
            ('transformer.encoder.', 'encoder.'), ('.norm1.', '.self_attn_layer_norm.'), ('.linear1.', '.fc1.'),
            ('.linear2.', '.fc2.'), ('.norm2.', '.final_layer_norm.'), ('mask_features.', 'mask_projection.'),
            ('adapter_1.weight', 'adapter_1.0.weight'), ('adapter_1.norm.', 'adapter_1.1.'),
            ('layer_1.weight', 'layer_1.0.weight'), ('layer_1.norm.', 'layer_1.1.'))


def pixel_decoder_to_hf(state):
  out = {}
  for k, v in state.items():
    if k.startswith('sem_seg_head.pixel_decoder.'):
      k = k[len('sem_seg_head.pixel_decoder.'):]
      for a, b in PD_TO_HF:
        k = k.replace(a, b)
      out[k] = torch.from_numpy(v)
  return out


def predictor_to_hf(state, num_layers):
  p = lambda k: torch.from_numpy(state['sem_seg_head.predictor.' + k])
  out = {'queries_features.weight': p('query_feat.weight'), 'queries_embedder.weight': p('query_embed.weight'),
         'level_embed.weight': p('level_embed.weight'), 'decoder.layernorm.weight': p('decoder_norm.weight'),
         'decoder.layernorm.bias': p('decoder_norm.bias')}
  for i in range(3):
    for leaf in ('weight', 'bias'):
      out[f'decoder.mask_predictor.mask_embedder.{i}.0.{leaf}'] = p(f'mask_embed.layers.{i}.{leaf}')
  for j in range(num_layers):
    sa, ca, ffn, d = (f'transformer_self_attention_layers.{j}.', f'transformer_cross_attention_layers.{j}.',
                      f'transformer_ffn_layers.{j}.', f'decoder.layers.{j}.')
    for leaf in ('weight', 'bias'):
      for i, name in enumerate(('q_proj', 'k_proj', 'v_proj')):  # HF's self-attention is unpacked
        out[f'{d}self_attn.{name}.{leaf}'] = p(f'{sa}self_attn.in_proj_{leaf}').chunk(3)[i]
      out[f'{d}self_attn.out_proj.{leaf}'] = p(f'{sa}self_attn.out_proj.{leaf}')
      out[f'{d}self_attn_layer_norm.{leaf}'] = p(f'{sa}norm.{leaf}')
      out[f'{d}cross_attn.in_proj_{leaf}'] = p(f'{ca}multihead_attn.in_proj_{leaf}')
      out[f'{d}cross_attn.out_proj.{leaf}'] = p(f'{ca}multihead_attn.out_proj.{leaf}')
      out[f'{d}cross_attn_layer_norm.{leaf}'] = p(f'{ca}norm.{leaf}')
      out[f'{d}fc1.{leaf}'], out[f'{d}fc2.{leaf}'] = p(f'{ffn}linear1.{leaf}'), p(f'{ffn}linear2.{leaf}')
      out[f'{d}final_layer_norm.{leaf}'] = p(f'{ffn}norm.{leaf}')
  return out


def test_decoder_parts_load_strictly_into_transformers_and_match():
  # transformers' pixel decoder has GroupNorm(32): widths 64 with 32 groups; 8 heads as the HF config.
  config = tiny_config(conv_dim=64, mask_dim=64, num_groups=32, num_heads=8, num_layers=2, ffn_dim=128)
  config.model.decoder.update(hidden_dim=64, num_heads=8, ffn_dim=128, num_layers=2, num_queries=10)
  params = random_params(config, seed=1)
  state = et.export(params, config)
  m = config.model
  hf_config = Mask2FormerConfig(
      feature_size=64, mask_feature_size=64, encoder_layers=2, num_attention_heads=8, encoder_feedforward_dim=128,
      common_stride=4, feature_strides=[4, 8, 16, 32], dropout=0.0, hidden_dim=64, num_queries=10,
      decoder_layers=m.decoder.num_layers + 1, dim_feedforward=128, pre_norm=False)
  pd = hf.Mask2FormerPixelDecoder(hf_config, feature_channels=list(clip.get_variant('test_tiny').widths)).eval()
  pd.load_state_dict(pixel_decoder_to_hf(state), strict=True)
  tm = hf.Mask2FormerTransformerModule(in_features=64, config=hf_config).eval()
  tm.load_state_dict(predictor_to_hf(state, m.decoder.num_layers), strict=True)
  assert_trees_equal(port.pixel_decoder_params(pd), params['pixel_decoder'])
  assert_trees_equal(port.transformer_params(tm), params['mask_decoder'])

  rng = np.random.default_rng(2)
  feats = {f'res{i + 2}': rng.normal(size=(2, 128 // s, 96 // s, c)).astype(np.float32)
           for i, (s, c) in enumerate(zip((4, 8, 16, 32), clip.get_variant('test_tiny').widths))}
  nchw = lambda x: torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)
  with torch.no_grad():
    ref_pd = pd([nchw(feats[f'res{i}']) for i in range(2, 6)])
    ref_tm = tm([nchw(np.asarray(x.permute(0, 2, 3, 1))) for x in ref_pd.multi_scale_features],
                ref_pd.mask_features)
  with jax.default_matmul_precision('highest'):
    mask_features, multi_scale = jax.jit(pixel_decoder.MSDeformAttnPixelDecoder.from_config(m.pixel_decoder).apply)(
        {'params': params['pixel_decoder']}, feats)
    dec = jax.jit(mask_decoder.MaskedAttentionDecoder.from_config(m.decoder, mask_dim=64, dtype=jnp.float32).apply)(
        {'params': params['mask_decoder']}, multi_scale, mask_features)
  want_mf = ref_pd.mask_features.permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(mask_features), want_mf, atol=1e-4 * np.abs(want_mf).max(), rtol=0)
  want_q = np.stack([q.transpose(0, 1).numpy() for q in ref_tm.intermediate_hidden_states])  # (L+1, B, Q, C)
  want_m = np.stack([x.numpy() for x in ref_tm.masks_queries_logits])  # (L+1, B, Q, h, w)
  np.testing.assert_allclose(np.asarray(dec['queries']), want_q, atol=1e-4 * np.abs(want_q).max(), rtol=0)
  np.testing.assert_allclose(np.asarray(dec['pred_masks']), want_m, atol=1e-4 * np.abs(want_m).max(), rtol=0)


# ---- (e) errors ---------------------------------------------------------------------------------


def test_unmapped_param_is_an_error_naming_it():
  config = tiny_config()
  params = {**random_params(config), 'new_head': {'kernel': np.zeros((4, 4), np.float32)}}
  with pytest.raises(ValueError, match=r"OVSNet param 'new_head/kernel' has no FC-CLIP counterpart"):
    et.export(params, config)
  config.model.fusion = 'self_attn'  # the learned fusion of Table 4a has no FC-CLIP counterpart
  with pytest.raises(ValueError, match=r"OVSNet param 'fusion/.*' has no FC-CLIP counterpart \(unmapped\) "
                                      r"\(model.fusion 'self_attn'/'cross_attn' is a learned fusion"):
    et.export(random_params(config), config)


def test_params_not_matching_config_and_bad_state():
  config = tiny_config()
  params = random_params(config)
  params['void_embedding'] = np.zeros((7,), np.float32)
  with pytest.raises(ValueError, match=r"param 'void_embedding' has shape \(7,\), the config's model expects \(32,\)"):
    et.export(params, config)
  state = et.export(random_params(config), config)
  del state['sem_seg_head.predictor.query_feat.weight']
  with pytest.raises(ValueError, match=r"f.pth: missing tensor 'sem_seg_head.predictor.query_feat.weight'"):
    et.import_torch(state, config, source='f.pth')
  state = {**et.export(random_params(config), config), 'sem_seg_head.extra.weight': np.zeros(2, np.float32)}
  with pytest.raises(ValueError, match=r"unexpected tensors \['sem_seg_head.extra.weight'\]"):
    et.import_torch(state, config)


def test_existing_output_and_missing_checkpoint(tmp_path):
  config = tiny_config()
  state = et.export(random_params(config), config)
  out = str(tmp_path / 'model.safetensors')
  et.save(state, et.metadata(state, config), out)
  with pytest.raises(FileExistsError, match=r"model.safetensors' exists; pass --overwrite to replace it"):
    et.save(state, et.metadata(state, config), out)
  with pytest.raises(FileExistsError, match='exists; pass --overwrite'):  # checked before any restore
    et.export_checkpoint(config, str(tmp_path / 'nowhere'), out)
  state2 = et.export(random_params(config, seed=5), config)
  et.save(state2, et.metadata(state2, config), out, overwrite=True)
  np.testing.assert_array_equal(et.load_state(out)['void_embedding.weight'], state2['void_embedding.weight'])
  with pytest.raises(FileNotFoundError, match=r"--checkpoint '.*nowhere': directory does not exist"):
    et.export_checkpoint(config, str(tmp_path / 'nowhere'), str(tmp_path / 'other.safetensors'))
  with pytest.raises(ValueError, match=r"expected a .safetensors, .pth or .pt file name"):
    et.save(state, {}, str(tmp_path / 'model.npz'))
