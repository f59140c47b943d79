"""open_clip -> Flax conversion: key coverage, the checkpoint directory, and every error path."""
import hashlib
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.models import clip
from ovsnet_jax.models import clip_text

import open_clip  # noqa: E402  (test extra: a missing install fails, never skips)
import torch  # noqa: E402
import safetensors.torch as safetensors_torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def meta_state_shapes(name: str) -> dict:
  """open_clip's state dict {key: shape} of `name`, built on the meta device (no memory)."""
  with torch.device('meta'):
    model = open_clip.create_model(name, pretrained=None, device='meta')
  return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def tiny_state(tiny_clip_checkpoint) -> dict:
  return safetensors_torch.load_file(tiny_clip_checkpoint['safetensors'])


def listing(path) -> list:
  return sorted(os.listdir(path))


def test_key_coverage_convnext_large_d_320():
  shapes = meta_state_shapes('convnext_large_d_320')
  mapping = convert.check_state_shapes(shapes, 'convnext_large_d_320')
  assert set(mapping) == set(shapes)
  assert {k: s for k, (_, s) in mapping.items()} == shapes
  flax_leaves = jax.tree.leaves(clip.param_shapes('convnext_large_d_320'))
  assert len(flax_leaves) == len(shapes) == 543
  assert sum(x.size for x in flax_leaves) == sum(int(np.prod(s)) for s in shapes.values())
  assert shapes['visual.head.mlp.fc1.weight'] == (1536, 1536)
  assert shapes['visual.head.mlp.fc2.weight'] == (768, 1536)
  assert 'visual.head.mlp.fc2.bias' not in shapes
  assert mapping['visual.trunk.stages.2.blocks.26.conv_dw.weight'] == (
      ('visual', 'trunk', 'stage2', 'block26', 'conv_dw', 'kernel'), (768, 1, 7, 7))
  assert mapping['transformer.resblocks.15.attn.in_proj_weight'][1] == (2304, 768)


def test_key_coverage_vit_l_14_text_tower_only():
  shapes = meta_state_shapes('ViT-L-14')
  mapping = convert.check_state_shapes(shapes, 'ViT-L-14')
  ignored = set(shapes) - set(mapping)
  assert ignored and all(k.startswith(convert.TEXT_ONLY_IGNORED_PREFIX) for k in ignored)
  assert set(mapping) == {k for k in shapes if not k.startswith('visual.')}
  assert {k: s for k, (_, s) in mapping.items()} == {k: shapes[k] for k in mapping}
  assert len(mapping) == len(jax.tree.leaves(clip.param_shapes('ViT-L-14'))) == 150
  assert 'visual' not in clip.param_shapes('ViT-L-14')


def test_quick_gelu_matches_open_clip():
  x = np.linspace(-6, 6, 101, dtype=np.float32)
  ref = open_clip.transformer.QuickGELU()(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(np.asarray(clip_text.quick_gelu(x)), ref, rtol=1e-6, atol=1e-7)


def test_launch_script_reads_training_checkpoint_with_module_prefix(
    tiny_clip_checkpoint, tiny_clip_dir, tmp_path):
  state = torch.load(tiny_clip_checkpoint['bin'], weights_only=True)
  path = str(tmp_path / 'epoch_1.pt')  # open_clip's training checkpoint layout, DDP prefix
  torch.save({'epoch': 1, 'name': 'run', 'state_dict': {f'module.{k}': v for k, v in state.items()},
              'optimizer': {}}, path)
  spec = importlib.util.spec_from_file_location(
      'convert_open_clip', os.path.join(REPO, 'launch', 'convert_open_clip.py'))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  out = str(tmp_path / 'converted')
  assert script.main(['--model', 'test_tiny', '--checkpoint', path, '--out', out]) == 0
  assert listing(out) == sorted([convert.BPE_NAME, convert.CONFIG_NAME, convert.PARAMS_NAME])
  with open(os.path.join(out, convert.CONFIG_NAME)) as f:
    config = json.load(f)
  with open(path, 'rb') as f:
    assert config == {'variant': 'test_tiny', 'source': path,
                      'sha256': hashlib.sha256(f.read()).hexdigest()}
  with open(os.path.join(out, convert.BPE_NAME), 'rb') as f, \
      open(convert.bpe_vocab_path(), 'rb') as g:
    assert f.read() == g.read()
  variant, params = convert.load_clip_checkpoint(out)
  _, reference = convert.load_clip_checkpoint(tiny_clip_dir)  # from the .safetensors file
  assert variant == 'test_tiny'
  assert jax.tree.all(jax.tree.map(np.array_equal, params, reference))
  np.testing.assert_array_equal(params['text']['token_embedding']['embedding'],
                                state['token_embedding.weight'].numpy())
  np.testing.assert_array_equal(params['visual']['trunk']['stem_conv']['kernel'],
                                state['visual.trunk.stem.0.weight'].numpy().transpose(2, 3, 1, 0))
  with pytest.raises(SystemExit):
    script.main(['--model', 'convnext_huge', '--checkpoint', path, '--out', out + '2'])


def test_existing_out_refused_unless_overwrite(tiny_clip_checkpoint, tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'marker').write_text('old')
  with pytest.raises(ValueError, match=r"Output directory '.*out' exists; pass --overwrite"):
    convert.convert_checkpoint('test_tiny', tiny_clip_checkpoint['safetensors'], str(out))
  assert listing(out) == ['marker']
  convert.convert_checkpoint('test_tiny', tiny_clip_checkpoint['safetensors'], str(out),
                             overwrite=True)
  assert 'marker' not in listing(out)
  assert listing(tmp_path) == ['out']
  assert convert.load_clip_checkpoint(str(out))[0] == 'test_tiny'


@pytest.mark.parametrize('fmt', ['safetensors', 'bin'])
def test_truncated_file(tiny_clip_checkpoint, tmp_path, fmt):
  with open(tiny_clip_checkpoint[fmt], 'rb') as f:
    data = f.read()
  path = tmp_path / f'truncated.{fmt}'
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=rf"Could not read open_clip checkpoint '{path}' \(truncated"):
    convert.convert_checkpoint('test_tiny', str(path), str(tmp_path / 'out'))
  assert listing(tmp_path) == [path.name]


def test_missing_file_and_unknown_model(tiny_clip_checkpoint, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"open_clip checkpoint '.*nope.bin' does not exist"):
    convert.convert_checkpoint('test_tiny', str(tmp_path / 'nope.bin'), str(tmp_path / 'out'))
  with pytest.raises(ValueError, match=r"Unknown CLIP variant 'convnext_huge'; expected one of"):
    convert.convert_checkpoint('convnext_huge', tiny_clip_checkpoint['bin'], str(tmp_path / 'out'))
  assert listing(tmp_path) == []


def test_pickled_objects_are_not_loaded(tiny_clip_checkpoint, tmp_path):
  path = tmp_path / 'evil.bin'
  torch.save({'state_dict': tiny_state(tiny_clip_checkpoint), 'hook': hashlib.sha256}, path)
  with pytest.raises(ValueError, match='Could not read open_clip checkpoint.*Unpickl') as e:
    convert.read_state_dict(str(path))
  assert 'weights_only' not in str(e.value)  # no advice to load it with weights_only=False


def _save_and_convert(state: dict, tmp_path):
  path = tmp_path / 'edited.safetensors'
  safetensors_torch.save_file(state, str(path))
  try:
    convert.convert_checkpoint('test_tiny', str(path), str(tmp_path / 'out'))
  finally:
    assert listing(tmp_path) == [path.name]  # nothing written


def test_mis_shaped_tensor(tiny_clip_checkpoint, tmp_path):
  state = tiny_state(tiny_clip_checkpoint)
  state['visual.head.proj.weight'] = torch.zeros(32, 64)
  with pytest.raises(ValueError, match=r"tensor 'visual.head.proj.weight' has shape \(32, 64\), "
                     r"expected \(32, 128\) for CLIP variant 'test_tiny'"):
    _save_and_convert(state, tmp_path)


def test_missing_tensor(tiny_clip_checkpoint, tmp_path):
  state = tiny_state(tiny_clip_checkpoint)
  del state['transformer.resblocks.1.mlp.c_fc.bias']
  with pytest.raises(ValueError, match=r"missing tensor 'transformer.resblocks.1.mlp.c_fc.bias' "
                     r"\(expected shape \(128,\)\) for CLIP variant 'test_tiny'; 1 missing"):
    _save_and_convert(state, tmp_path)


def test_extra_tensor(tiny_clip_checkpoint, tmp_path):
  state = tiny_state(tiny_clip_checkpoint)
  state['visual.trunk.head.fc.weight'] = torch.zeros(10, 128)
  with pytest.raises(ValueError, match=r"unexpected tensor 'visual.trunk.head.fc.weight' \(shape "
                     r"\(10, 128\)\) not used by CLIP variant 'test_tiny'"):
    _save_and_convert(state, tmp_path)


def test_failed_write_leaves_nothing_and_keeps_old_output(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'marker').write_text('old')
  bad_params = {'text': {'ln_final': {'scale': object()}}}  # orbax cannot serialise this leaf
  with pytest.raises(ValueError, match=r"Unsupported type.*\('text', 'ln_final', 'scale'\)"):
    convert.write_checkpoint_dir(bad_params, {'variant': 'test_tiny'}, str(out), overwrite=True)
  assert listing(tmp_path) == ['out'] and listing(out) == ['marker']


def test_load_clip_checkpoint_errors(tiny_clip_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"clip_config.json' does not exist: not a converted"):
    convert.load_clip_checkpoint(str(tmp_path))
  _, params = convert.load_clip_checkpoint(tiny_clip_dir)
  del params['visual']['head_norm']
  out = convert.write_checkpoint_dir(
      params, {'variant': 'test_tiny', 'source': 'x', 'sha256': 'y'}, str(tmp_path / 'partial'))
  with pytest.raises(ValueError, match=r"param visual/head_norm/bias missing for 'test_tiny'"):
    convert.load_clip_checkpoint(out)
  with open(os.path.join(out, convert.CONFIG_NAME), 'w') as f:
    json.dump({'variant': 'convnext_huge', 'source': 'x', 'sha256': 'y'}, f)
  with pytest.raises(ValueError, match="Unknown CLIP variant 'convnext_huge'"):
    convert.load_clip_checkpoint(out)
