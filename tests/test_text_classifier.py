"""The text classifier: template averaging, synonym padding and max, and the on-disk cache."""
import os

import jax.numpy as jnp
import numpy as np
import open_clip
import pytest

from ovsnet_jax.text import classifier as classifier_lib
from ovsnet_jax.text import templates

D = 8
CLASSES = [['cat', 'kitty'], ['dog'], ['traffic light', 'signal', 'stop light'], ['cat food']]


class BagOfTokensEncoder:
  """Deterministic text encoder: sum of fixed random token vectors (N, 77) -> (N, D); counts calls."""

  def __init__(self, seed=0):
    self.table = np.random.default_rng(seed).normal(size=(49408, D)).astype(np.float32)
    self.table[0] = 0.0  # padding token
    self.calls, self.shapes = 0, []

  def __call__(self, tokens):
    self.calls += 1
    self.shapes.append(tokens.shape)
    return self.table[tokens].sum(axis=1) * np.linspace(1.0, 3.0, D, dtype=np.float32)


def direct_numpy(encoder, class_names, temps):
  """The classifier computed prompt by prompt with open_clip's tokenizer, in float64."""
  s_max = max(len(c) for c in class_names)
  embeds = np.zeros((len(class_names), s_max, D))
  for k, synonyms in enumerate(class_names):
    for s, name in enumerate(synonyms):
      tokens = open_clip.tokenize([t.format(name) for t in temps]).numpy().astype(np.int32)
      e = encoder(tokens).astype(np.float64)  # (T, D)
      e /= np.linalg.norm(e, axis=-1, keepdims=True)
      m = e.mean(axis=0)
      embeds[k, s] = m / np.linalg.norm(m)
  return embeds


def test_averaging_and_renormalisation_match_numpy():
  encoder = BagOfTokensEncoder()
  text = classifier_lib.TextClassifier(encoder, chunk_size=16)(CLASSES)
  assert text['embeds'].shape == (4, 3, D) and text['embeds'].dtype == np.float32
  np.testing.assert_array_equal(text['valid'], [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]])
  expected = direct_numpy(BagOfTokensEncoder(), CLASSES, templates.VILD_TEMPLATES)
  np.testing.assert_allclose(text['embeds'], expected, atol=1e-6)
  assert (text['embeds'][~text['valid']] == 0).all()
  np.testing.assert_allclose(np.linalg.norm(text['embeds'][text['valid']], axis=-1), 1, atol=1e-6)
  # 7 distinct names x 14 templates = 98 prompts -> 7 calls of exactly 16 prompts (last padded),
  # each cut after its longest prompt (rounded up to 8 tokens).
  assert encoder.calls == 7 and all(n == 16 and t % 8 == 0 and t < 77 for n, t in encoder.shapes)
  untrimmed = BagOfTokensEncoder()
  full = classifier_lib.TextClassifier(untrimmed, chunk_size=16, trim=False)(CLASSES)
  assert set(untrimmed.shapes) == {(16, 77)}
  np.testing.assert_allclose(text['embeds'], full['embeds'], atol=1e-6)


def test_chunk_size_does_not_change_the_result():
  small = classifier_lib.TextClassifier(BagOfTokensEncoder(), chunk_size=5)(CLASSES)
  large = classifier_lib.TextClassifier(BagOfTokensEncoder(), chunk_size=1000)(CLASSES)
  np.testing.assert_allclose(small['embeds'], large['embeds'], atol=1e-6)


def test_repeated_synonyms_are_encoded_once():
  encoder = BagOfTokensEncoder()
  clf = classifier_lib.TextClassifier(encoder, templates=['a {}.'], chunk_size=1)
  text = clf([['cat', 'cat'], ['dog', 'cat']])
  assert encoder.calls == 2  # 'cat' and 'dog'
  np.testing.assert_array_equal(text['embeds'][0, 0], text['embeds'][1, 1])


def test_synonym_max_logits_hand_computed():
  text = {
      'embeds': np.array([[[1, 0], [0, 1]], [[0.6, 0.8], [1, 0]]], np.float32),  # (K=2, S=2, D=2)
      'valid': np.array([[True, True], [True, False]]),  # class 1's [1, 0] is padding
  }
  feats = jnp.array([[2.0, 0.0], [0.6, 0.8]])  # the first is not normalised
  logits = classifier_lib.synonym_max_logits(feats, text, jnp.log(10.0))
  # feat [1, 0]: class 0 max(1, 0) = 1; class 1 0.6 (the padded 1.0 must not win).
  # feat [.6, .8]: class 0 max(.6, .8) = .8; class 1 1.
  np.testing.assert_allclose(logits, [[10.0, 6.0], [8.0, 10.0]], rtol=1e-6)
  clamped = classifier_lib.synonym_max_logits(feats[None], text, jnp.log(1000.0))  # exp clamped at 100
  assert clamped.shape == (1, 2, 2)
  np.testing.assert_allclose(clamped[0], [[100.0, 60.0], [80.0, 100.0]], rtol=1e-6)


def make(tmp_path, encoder, cache_id='ckpt-a'):
  return classifier_lib.TextClassifier(encoder, chunk_size=32, cache_dir=str(tmp_path),
                                       cache_id=cache_id)


def test_cache_hit_returns_identical_arrays_without_encoding(tmp_path):
  first = make(tmp_path, BagOfTokensEncoder())(CLASSES)
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].startswith('text_') and files[0].endswith('.npz')
  encoder = BagOfTokensEncoder()
  second = make(tmp_path, encoder)(CLASSES)
  assert encoder.calls == 0
  np.testing.assert_array_equal(second['embeds'], first['embeds'])
  np.testing.assert_array_equal(second['valid'], first['valid'])


def test_cache_misses_on_other_classes_checkpoint_or_templates(tmp_path):
  make(tmp_path, BagOfTokensEncoder())(CLASSES)
  for clf, classes in [(make(tmp_path, BagOfTokensEncoder()), CLASSES[:3]),
                       (make(tmp_path, BagOfTokensEncoder(), cache_id='ckpt-b'), CLASSES)]:
    clf(classes)
    assert clf.encode_tokens.calls > 0
  other = classifier_lib.TextClassifier(BagOfTokensEncoder(), templates=['a {}.'], chunk_size=32,
                                        cache_dir=str(tmp_path), cache_id='ckpt-a')
  other(CLASSES)
  assert other.encode_tokens.calls > 0
  assert len(os.listdir(tmp_path)) == 4  # no temp files left behind


@pytest.mark.parametrize('corruption', ['garbage', 'truncated', 'wrong_key', 'not_unit'])
def test_corrupt_cache_is_rebuilt(tmp_path, corruption):
  clf = make(tmp_path, BagOfTokensEncoder())
  fresh = clf(CLASSES)
  path = clf.cache_path(CLASSES)
  if corruption == 'garbage':
    open(path, 'wb').write(b'not an npz file')
  elif corruption == 'truncated':
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])
  elif corruption == 'wrong_key':
    classifier_lib.write_cache(path, 'another key', fresh)
  else:
    classifier_lib.write_cache(path, clf.cache_key(CLASSES),
                               {'embeds': fresh['embeds'] * 2, 'valid': fresh['valid']})
  encoder = BagOfTokensEncoder()
  rebuilt = make(tmp_path, encoder)(CLASSES)
  assert encoder.calls > 0
  np.testing.assert_allclose(rebuilt['embeds'], fresh['embeds'], atol=1e-6)
  hit = make(tmp_path, BagOfTokensEncoder())
  np.testing.assert_array_equal(hit(CLASSES)['embeds'], rebuilt['embeds'])  # the file was rewritten
  assert hit.encode_tokens.calls == 0


def test_bad_arguments():
  enc = BagOfTokensEncoder()
  with pytest.raises(ValueError, match='cache_id: required with cache_dir'):
    classifier_lib.TextClassifier(enc, cache_dir='/tmp/x')
  with pytest.raises(ValueError, match='templates: expected a non-empty list with one "{}" each'):
    classifier_lib.TextClassifier(enc, templates=['no placeholder'])
  clf = classifier_lib.TextClassifier(enc)
  with pytest.raises(ValueError, match='class_names: expected a non-empty list of synonym lists'):
    clf([])
  with pytest.raises(ValueError, match=r"class_names\[1\]: expected a non-empty list of names, got 'dog'"):
    clf([['cat'], 'dog'])
  with pytest.raises(ValueError, match=r"class_names\[0\]: names must be non-empty strings, got ' '"):
    clf([[' ']])
  bad = classifier_lib.TextClassifier(lambda tokens: np.zeros((3, D)), chunk_size=4)
  with pytest.raises(ValueError, match=r'encode_tokens: expected \(N, D\) for N=4 prompts, got shape \(3, 8\)'):
    bad([['cat']])


def fcclip_reference(model, class_names, temps):
  """FC-CLIP's text classifier and logits with open_clip's torch model (fcclip.py, 128 per batch)."""
  import torch  # pylint: disable=g-import-not-at-top
  prompts = [t.format(s) for c in class_names for s in c for t in temps]
  with torch.no_grad():
    feats = torch.cat([model.encode_text(open_clip.tokenize(prompts[i:i + 128]))
                       for i in range(0, len(prompts), 128)])
    feats /= feats.norm(dim=-1, keepdim=True)
    feats = feats.reshape(-1, len(temps), feats.shape[-1]).mean(1)
    feats /= feats.norm(dim=-1, keepdim=True)  # (sum of S_k, D)
  return feats, [len(c) for c in class_names]


def fcclip_logits(x, text_classifier, logit_scale, num_templates):
  """FC-CLIP's get_classification_logits (without the void column)."""
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.nn.functional.normalize(x, dim=-1)
  logits = torch.clamp(logit_scale.exp(), max=100) * x @ text_classifier.T
  out, start = [], 0
  for n in num_templates:
    out.append(logits[..., start:start + n].max(-1).values)
    start += n
  return torch.stack(out, dim=-1)


def test_from_checkpoint_matches_open_clip(tiny_clip_checkpoint, tiny_clip_dir, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.text import vocab  # pylint: disable=g-import-not-at-top
  model = open_clip.create_model(tiny_clip_checkpoint['model_name'],
                                 pretrained=tiny_clip_checkpoint['safetensors']).eval()
  voc21 = vocab.load_class_names('voc21')
  classes = [voc21[0][:20]] + voc21[1:6]  # 20 background synonyms vs 1-4: padding
  clf = classifier_lib.TextClassifier.from_checkpoint(tiny_clip_dir, cache_dir=str(tmp_path))
  text = clf(classes)
  ref, num = fcclip_reference(model, classes, templates.VILD_TEMPLATES)
  ours = np.concatenate([text['embeds'][k, :n] for k, n in enumerate(num)])
  np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)
  np.testing.assert_array_equal(text['valid'].sum(1), num)

  feats = np.random.default_rng(0).normal(size=(2, 5, ours.shape[-1])).astype(np.float32)
  scale = model.logit_scale.detach()
  expected = fcclip_logits(torch.from_numpy(feats), ref, scale, num).numpy()
  got = classifier_lib.synonym_max_logits(jnp.asarray(feats), text, jnp.asarray(scale.numpy()))
  np.testing.assert_allclose(got, expected, atol=1e-4)

  again = classifier_lib.TextClassifier.from_checkpoint(tiny_clip_dir, cache_dir=str(tmp_path))
  assert again.cache_id == clf.cache_id and again.cache_id.startswith('test_tiny:')
  np.testing.assert_array_equal(again(classes)['embeds'], text['embeds'])  # cache hit


def test_vild_templates_are_fcclips():
  # VILD_PROMPT in bytedance/fc-clip: fcclip/fcclip.py, in order.
  assert templates.VILD_TEMPLATES == (
      'a photo of a {}.', 'This is a photo of a {}', 'There is a {} in the scene',
      'There is the {} in the scene', 'a photo of a {} in the scene', 'a photo of a small {}.',
      'a photo of a medium {}.', 'a photo of a large {}.', 'This is a photo of a small {}.',
      'This is a photo of a medium {}.', 'This is a photo of a large {}.',
      'There is a small {} in the scene.', 'There is a medium {} in the scene.',
      'There is a large {} in the scene.')
  assert templates.get_templates('vild') is templates.VILD_TEMPLATES
  assert templates.fill_templates('cat', templates.VILD_TEMPLATES)[2] == 'There is a cat in the scene'
  with pytest.raises(ValueError, match="config.text.templates: unknown template set 'clip'"):
    templates.get_templates('clip')


def test_trim_tokens_hand_computed():
  from ovsnet_jax.models import clip_text  # pylint: disable=g-import-not-at-top
  tokens = np.zeros((2, 77), np.int32)
  tokens[0, :4] = [49406, 320, 1929, 49407]  # SOT a cat EOT
  tokens[1, :10] = [49406] + [320] * 8 + [49407]
  assert clip_text.trim_tokens(tokens).shape == (2, 16)  # longest EOT at 9 -> 10 tokens -> 16
  assert clip_text.trim_tokens(tokens, multiple=1).shape == (2, 10)
  np.testing.assert_array_equal(clip_text.trim_tokens(tokens), tokens[:, :16])


def test_trimmed_text_tower_equals_full_context(tiny_clip_checkpoint, tiny_clip_dir):
  """The causal mask makes the EOT output independent of later positions: cut tokens, same embeddings."""
  import jax  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.convert import open_clip as convert  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.models import clip_text  # pylint: disable=g-import-not-at-top
  _, params = convert.load_clip_checkpoint(tiny_clip_dir)
  tokens = open_clip.tokenize(['a photo of a cat.', 'a photo of the small traffic light, fire hydrant.', ''])
  apply = jax.jit(clip_text.CLIPText('test_tiny').apply)
  full = np.asarray(apply({'params': params['text']}, tokens.numpy().astype(np.int32)))
  cut = clip_text.trim_tokens(tokens.numpy().astype(np.int32))
  assert cut.shape[1] < 77
  trimmed = np.asarray(apply({'params': params['text']}, cut))
  np.testing.assert_allclose(trimmed, full, rtol=0, atol=1e-6 * np.abs(full).max())
  model = open_clip.create_model(tiny_clip_checkpoint['model_name'],
                                 pretrained=tiny_clip_checkpoint['safetensors']).eval()
  ref = model.encode_text(tokens).detach().numpy()  # open_clip on the full 77-token context
  scale = np.abs(ref).max()
  print('trimmed vs open_clip max abs err / scale:', np.abs(trimmed - ref).max() / scale)
  assert np.abs(trimmed - ref).max() <= np.abs(full - ref).max() + 1e-6 * scale  # parity unchanged


def test_default_cache_dir_is_the_user_cache(monkeypatch, tmp_path):
  monkeypatch.delenv('OVSNET_JAX_CACHE', raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert classifier_lib.default_cache_dir() == str(tmp_path / 'xdg' / 'ovsnet_jax' / 'text')
  monkeypatch.setenv('OVSNET_JAX_CACHE', str(tmp_path / 'mine'))
  assert classifier_lib.default_cache_dir() == str(tmp_path / 'mine' / 'text')
