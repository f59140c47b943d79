"""Class-name vocabularies: shipped files, parsing of users' files, errors, seen/unseen mask."""
import hashlib
import os

import numpy as np
import pytest

from ovsnet_jax.text import vocab

# sha256 of bytedance/fc-clip @ 2b0bbe2 fcclip/data/datasets/<file>_with_prompt_eng.txt.
FCCLIP_SHA256 = {
    'ade150': '3204c154e2c524ce2575f873838893fc25d68c5c4f7973f2d4ee76d7e24bb781',
    'ade847': '173d44806d8b3ca94cfb8947f459e6ecdb90770387b3a4116fdd78e8e111d732',
    'cityscapes19': 'e4afc7fb7776a05213822333a48ad708448a0fd25eb819b2ea7ef253af164b43',
    'coco_panoptic_133': '560169ea22202460c3b9427df387f8d1778e94dadecd38554da683e2097cda9f',
    'coco_stuff_171': 'af860dc8362af7c7fed556b79014cfbf775b7ece2279b11317a16260cdca9bcb',
    'pc459': '574ae7e3dc9decff20366696309c36d40502cda90204f7e94c96251559be5197',
    'pc59': '0bf48d67f93b15d331cbf36e112777cc3a407084e94e395b98fad8c67e50149a',
    'voc21': '9acddc0dc82ebb9167e23ac93b197c91794603ec320f5e30053f983d4fa23c21',
}
SIZES = {'coco_panoptic_133': 133, 'coco_stuff_171': 171, 'ade150': 150, 'ade847': 847,
         'pc59': 59, 'pc459': 459, 'voc20': 20, 'voc21': 21, 'cityscapes19': 19}


def write(tmp_path, text, name='classes.txt'):
  path = tmp_path / name
  path.write_text(text, encoding='utf-8')
  return str(path)


@pytest.mark.parametrize('name', sorted(FCCLIP_SHA256))
def test_shipped_files_are_fcclips(name):
  path = os.path.join(vocab.class_names_dir(), f'{name}.txt')
  assert hashlib.sha256(open(path, 'rb').read()).hexdigest() == FCCLIP_SHA256[name]


@pytest.mark.parametrize('name', vocab.VOCABULARIES)
def test_shipped_sizes(name):
  classes = vocab.load_class_names(name)
  assert len(classes) == SIZES[name]
  assert all(len(c) >= 1 and all(s and s == s.strip() for s in c) for c in classes)


def test_shipped_spot_checks():
  ade = vocab.load_class_names('ade150')
  assert ade[0] == ['wall', 'walls', 'brick wall', 'stone wall', 'interior wall']
  coco = vocab.load_class_names('coco_panoptic_133')
  assert coco[0][0] == 'person' and coco[11] == ['stop sign']  # id 12 is invalid_class_id
  assert coco[-1] == ['rug']
  stuff = vocab.load_class_names('coco_stuff_171')
  assert ['wall-wood', 'wood wall', 'wall wood'] in stuff  # "wall-wood,wood wall, wall wood"
  voc21 = vocab.load_class_names('voc21')
  assert voc21[0][0] == 'background' and len(voc21[0]) == 74
  assert vocab.load_class_names('voc20') == voc21[1:]
  city = vocab.load_class_names('cityscapes19')
  assert city[0] == ['road', 'railroad'] and city[18] == ['bicycle', 'bicycles', 'bike', 'bikes']


def test_indexed_file_skips_invalid_ids_and_blank_lines(tmp_path):
  path = write(tmp_path, '0:invalid_class_id\n1:cat,cats, kitty\n\n5:dog\n7:invalid_class_id\n')
  assert vocab.read_class_file(path) == [['cat', 'cats', 'kitty'], ['dog']]


def test_plain_list_file(tmp_path):
  path = write(tmp_path, 'cat\ndog,puppy\n  traffic light  \n')
  assert vocab.read_class_file(path) == [['cat'], ['dog', 'puppy'], ['traffic light']]


@pytest.mark.parametrize('text,message', [
    ('1:cat\ndog\n', "line 2: expected 'idx:name,synonym,...' like the first line, got 'dog'"),
    ('cat\n2:dog\n', "line 2: expected 'name,synonym,...' without an index like the first line"),
    ('1:cat\n2:dog,,puppy\n', "line 2: empty class name in 'dog,,puppy'"),
    ('1:cat\n2:\n', "line 2: empty class name in ''"),
    ('cat\ndog, \n', "line 2: empty class name in 'dog, '"),
    ('1:cat\n3:dog\n2:cow\n', 'line 3: class index 2 must be larger than the previous one \\(3\\)'),
    ('1:cat\n1:dog\n', 'line 2: class index 1 must be larger than the previous one \\(1\\)'),
    ('cat\ndog,puppy\ndog,puppy\n', "line 3: duplicate class 'dog,puppy' \\(same as line 2\\)"),
    ('\n\n', 'no class names found; expected one class per line'),
    ('0:invalid_class_id\n', 'no class names found'),
])
def test_malformed_files(tmp_path, text, message):
  path = write(tmp_path, text)
  with pytest.raises(ValueError, match='classes.txt: ' + message):
    vocab.read_class_file(path)


def test_missing_file_and_unknown_vocabulary(tmp_path):
  with pytest.raises(FileNotFoundError, match='class-name file not found: .*nope.txt'):
    vocab.read_class_file(str(tmp_path / 'nope.txt'))
  with pytest.raises(ValueError, match="unknown vocabulary 'ade151'; expected one of"):
    vocab.load_class_names('ade151')


def test_not_utf8(tmp_path):
  path = tmp_path / 'latin1.txt'
  path.write_bytes('café\n'.encode('latin-1'))
  with pytest.raises(ValueError, match='latin1.txt: expected a UTF-8 text file'):
    vocab.read_class_file(str(path))


def test_command_line_class_list():
  assert vocab.parse_class_arg('cat, dog|puppy ,sky') == [['cat'], ['dog', 'puppy'], ['sky']]
  with pytest.raises(ValueError, match="class list 'cat,,dog': class 1 is empty"):
    vocab.parse_class_arg('cat,,dog')
  with pytest.raises(ValueError, match="class list 'cat,dog,cat': duplicate class 'cat'"):
    vocab.parse_class_arg('cat,dog,cat')


def test_resolve_vocabulary(tmp_path):
  assert vocab.resolve_vocabulary('voc20') == vocab.load_class_names('voc20')
  path = write(tmp_path, 'cat\ndog\n')
  assert vocab.resolve_vocabulary(path) == [['cat'], ['dog']]
  assert vocab.resolve_vocabulary('cat,dog|puppy') == [['cat'], ['dog', 'puppy']]


def test_seen_mask_hand_case():
  train = [['person', 'man'], ['car', 'cars'], ['wall']]
  test = [['man', 'guy'], ['truck'], ['walls', 'wall'], ['vehicle', 'car'], ['cars ']]
  np.testing.assert_array_equal(vocab.seen_mask(test, train), [True, False, True, True, False])
  assert vocab.seen_mask(test, train).dtype == bool


def test_seen_mask_against_coco():
  ade = vocab.load_class_names('ade150')
  mask = vocab.seen_mask(ade)  # default training vocabulary: COCO panoptic
  np.testing.assert_array_equal(mask, vocab.seen_mask(ade, vocab.load_class_names('coco_panoptic_133')))
  named = dict(zip((c[0] for c in ade), mask))
  assert named['wall'] and named['sky'] and named['bed']
  assert not named['escalator'] and not named['armchair'] and not named['bathtub']
  assert vocab.seen_mask(vocab.load_class_names('coco_panoptic_133')).all()


@pytest.mark.parametrize('spec,message', [
    ('ade151', r"unknown vocabulary 'ade151'.*did you mean 'ade150'"),
    ('ADE150', r"unknown vocabulary 'ADE150'.*did you mean 'ade150'"),
    ('coco', r"unknown vocabulary 'coco'.*did you mean 'coco_panoptic_133' or 'coco_stuff_171'"),
    ('my_classes/ade15.txt', r'class-name file not found: my_classes/ade15.txt \(did you mean .ade150.'),
    ('cat', r"unknown vocabulary 'cat': a single name must be a shipped vocabulary.*one class: \"cat,\""),
])
def test_unknown_vocabulary_or_file_is_an_error_with_suggestions(spec, message):
  with pytest.raises(vocab.VocabularyError, match=message):
    vocab.resolve_vocabulary(spec)


def test_vocabulary_error_is_a_user_error_and_a_value_error():
  from ovsnet_jax import cli  # pylint: disable=g-import-not-at-top
  assert issubclass(vocab.VocabularyError, cli.UserError) and issubclass(vocab.VocabularyError, ValueError)


def test_one_class_with_a_trailing_comma():
  assert vocab.resolve_vocabulary('cat,') == [['cat']]
  assert vocab.resolve_vocabulary('dog|puppy') == [['dog', 'puppy']]
  assert vocab.resolve_vocabulary(' ade150 ') == vocab.load_class_names('ade150')
