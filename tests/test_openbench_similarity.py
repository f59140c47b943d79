"""Vocabulary similarity: exact cases, NumPy parity, prompting rules, the launcher on a real tiny CLIP."""
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from ovsnet_jax.openbench import similarity
from ovsnet_jax.text import classifier as classifier_lib
from ovsnet_jax.text import vocab

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'launch'))
import vocab_similarity  # pylint: disable=g-import-not-at-top,wrong-import-position


def table_encoder(vectors: dict):
  """An encoder whose name embeddings are given: name -> (D,) vector (normalised here)."""
  def encode(class_names):
    d = len(next(iter(vectors.values())))
    s = max(len(c) for c in class_names)
    embeds = np.zeros((len(class_names), s, d), np.float32)
    valid = np.zeros((len(class_names), s), bool)
    for k, synonyms in enumerate(class_names):
      for j, name in enumerate(synonyms):
        embeds[k, j] = classifier_lib.l2_normalize(np.asarray(vectors[name], np.float32))
        valid[k, j] = True
    return {'embeds': embeds, 'valid': valid}
  return encode


def angle(deg):
  return [np.cos(np.radians(deg)), np.sin(np.radians(deg)), 0.0]


def test_hand_computed_similarities_and_nearest_class():
  enc = table_encoder({'road': angle(0), 'sky': angle(90), 'lane': angle(30), 'cloud': angle(80),
                       'haze': angle(100), 'path': [0.0, 0.0, 1.0]})
  sims, nearest = similarity.vocabulary_similarity(
      enc, [['lane'], ['cloud'], ['path']], [['road'], ['sky']], similarity.Prompting())
  np.testing.assert_allclose(sims, [np.cos(np.radians(30)), np.cos(np.radians(10)), 0.0], atol=1e-6)
  np.testing.assert_array_equal(nearest[:2], [0, 1])
  # Synonym rules: 'main' sees only 'lane'; 'max' also the synonym 'haze' (10 degrees from sky).
  test = [['lane', 'haze']]
  main, _ = similarity.vocabulary_similarity(enc, test, [['road'], ['sky']], similarity.Prompting())
  best, _ = similarity.vocabulary_similarity(enc, test, [['road'], ['sky']],
                                             similarity.Prompting(synonyms='max'))
  mean, _ = similarity.vocabulary_similarity(enc, test, [['road'], ['sky']],
                                             similarity.Prompting(synonyms='mean'))
  np.testing.assert_allclose(main, [np.cos(np.radians(30))], atol=1e-6)
  np.testing.assert_allclose(best, [np.cos(np.radians(10))], atol=1e-6)
  np.testing.assert_allclose(mean, [np.cos(np.radians(25))], atol=1e-6)  # mean at 65 degrees


def test_max_over_synonym_pairs_matches_a_numpy_loop():
  rng = np.random.default_rng(0)
  names = [f'n{i}' for i in range(30)]
  enc = table_encoder({n: rng.normal(size=16) for n in names})
  test = [names[0:3], names[3:4], names[4:6], names[6:10]]
  train = [names[10:12], names[12:13], names[13:17], names[17:18], names[18:21]]
  sims, nearest = similarity.vocabulary_similarity(enc, test, train, similarity.Prompting(synonyms='max'))
  unit = {n: v for n, v in zip(names, classifier_lib.l2_normalize(
      np.stack([enc([[n]])['embeds'][0, 0] for n in names])))}
  ref = np.array([[max(float(unit[a] @ unit[b]) for a in t for b in c) for c in train] for t in test])
  np.testing.assert_allclose(sims, ref.max(1), atol=1e-6)
  np.testing.assert_array_equal(nearest, ref.argmax(1))


def test_stats_equal_numpy_and_table_row_format():
  sims = np.array([0.9756, 1.0, 0.2608, 0.6452, 0.7947])
  stats = similarity.similarity_stats(sims)
  assert stats == {'num_classes': 5, 'mean': pytest.approx(np.mean(sims)), 'median': 0.7947,
                   'min': 0.2608, 'max': 1.0}
  assert similarity.table_row('VOC', stats, 1449) == (
      f'| VOC | 5 | 1449 | {np.mean(sims):.4f} | 0.7947 | 0.2608 | 1.0000 |')
  with pytest.raises(ValueError, match=r'sims: expected a non-empty \(K,\) array'):
    similarity.similarity_stats(np.zeros((0,)))


def test_proxies_are_convex_mixes_of_two_distinct_training_classes():
  train = np.eye(6, dtype=np.float32)  # class l = basis vector l
  proxies = similarity.proxy_vectors(train, 200, gamma=2.0, seed=0)
  assert proxies.shape == (200, 6)
  np.testing.assert_allclose(proxies.sum(1), 1.0, atol=1e-6)  # alpha + (1 - alpha)
  assert ((proxies > 0).sum(1) == 2).all() and (proxies >= 0).all()
  np.testing.assert_array_equal(proxies, similarity.proxy_vectors(train, 200, 2.0, 0))


def test_bad_prompting_and_class_list_errors():
  with pytest.raises(ValueError, match=r"prompting synonyms: expected one of \['main', 'mean', 'max'\]"):
    similarity.Prompting(synonyms='all')
  with pytest.raises(ValueError, match='prompting templates: expected one of'):
    similarity.Prompting(templates='imagenet80')
  with pytest.raises(FileNotFoundError, match="--classes: 'nope.txt' is neither a shipped vocabulary"):
    vocab_similarity.load_vocabulary('nope.txt')


def test_launcher_with_the_tiny_converted_clip(tmp_path, tiny_clip_dir):
  """End to end on the real text tower: JSON = direct NumPy over TextClassifier embeddings."""
  own = tmp_path / 'food.txt'
  own.write_text('oystercatcher\nbicycle,bike\negg tart\nperson\n')
  out = tmp_path / 'out'
  assert vocab_similarity.main([f'--clip={tiny_clip_dir}', f'--classes=voc20,{own}',
                                f'--out={out}', '--proxies=50', '--templates=photo']) == 0
  report = json.loads((out / 'similarity.json').read_text())
  assert report['prompting'] == 'templates=photo,synonyms=main'
  classifier = classifier_lib.TextClassifier.from_checkpoint(tiny_clip_dir, templates=('a photo of a {}.',))
  train = classifier([c[:1] for c in vocab.load_class_names('coco_panoptic_133')])['embeds'][:, 0]
  for name, classes in (('voc20', vocab.load_class_names('voc20')), ('food', vocab.read_class_file(str(own)))):
    test = classifier([c[:1] for c in classes])['embeds'][:, 0]
    ref = (test @ train.T).max(1)  # (K,)
    got = report['lists'][name]
    np.testing.assert_allclose([c['similarity'] for c in got['classes']], ref, atol=1e-5)
    for key, fn in (('mean', np.mean), ('median', np.median), ('min', np.min), ('max', np.max)):
      assert got[key] == pytest.approx(float(fn(ref)), abs=1e-5), (name, key)
  # Names shared with COCO ('bicycle', 'person') embed identically: similarity 1 to themselves.
  food = {c['name']: c for c in report['lists']['food']['classes']}
  for name in ('bicycle', 'person'):
    assert food[name]['similarity'] == pytest.approx(1.0, abs=1e-5)
    assert food[name]['nearest_train'] == name
  table = (out / 'table.md').read_text().splitlines()
  assert table[2].startswith('| voc20 | 20 | - | ') and table[3].startswith('| food | 4 | - | ')
  for png in ('histogram.png', 'tsne.png'):
    with Image.open(out / png) as im:
      assert im.size[0] > 300 and im.size[1] > 300
