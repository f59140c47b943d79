"""The CLIP tokenizer against open_clip.tokenize (exact equality of every token id)."""
import gzip
import hashlib
import os

import numpy as np
import open_clip
import pytest

from ovsnet_jax.text import templates
from ovsnet_jax.text import tokenizer as tokenizer_lib
from ovsnet_jax.text import vocab

START, END = 49406, 49407


@pytest.fixture(scope='module')
def tok():
  return tokenizer_lib.Tokenizer()


def reference(texts):
  return open_clip.tokenize(list(texts)).numpy()


def test_shipped_bpe_is_open_clips_file():
  ours = tokenizer_lib.default_bpe_path()
  theirs = os.path.join(os.path.dirname(open_clip.__file__), 'bpe_simple_vocab_16e6.txt.gz')
  digest = lambda p: hashlib.sha256(open(p, 'rb').read()).hexdigest()
  assert digest(ours) == digest(theirs)


def test_vocabulary_layout(tok):
  assert tok.vocab_size == 49408
  assert (tok.start_id, tok.end_id) == (START, END)
  assert tok.encoder['a</w>'] == 320 and tok.encoder['!'] == 0


def test_every_shipped_class_name_and_synonym(tok):
  names = sorted({s for v in vocab.VOCABULARIES for c in vocab.load_class_names(v) for s in c})
  assert len(names) > 1600  # 1698 distinct names
  got = tok(names)
  assert got.dtype == np.int32 and got.shape == (len(names), 77)
  np.testing.assert_array_equal(got, reference(names))


def test_every_vild_prompt_of_ade150(tok):
  prompts = [p for c in vocab.load_class_names('ade150') for s in c
             for p in templates.fill_templates(s, templates.VILD_TEMPLATES)]
  np.testing.assert_array_equal(tok(prompts), reference(prompts))


EDGE_CASES = [
    '',
    'Café crème brûlée, naïve façade',  # accents
    'e\u0301 combining accent',
    '北京 東京 서울 漢字かなカナ',  # CJK
    'emoji 🐱🚀 👩‍👩‍👧 test',
    'Hello, World!!! ... ??? (a) [b] {c} -- #1 @x',  # punctuation
    "it's we'll they're I'd you've I'm don't",
    'don’t “curly” quotes',
    'AT&amp;T &lt;b&gt; &amp;amp; &#39;x&#39; &nbsp;',  # html entities (unescaped twice)
    '  lots \t of\n\n  whitespace \u00a0 here  ',
    'ﬁsh ＦＵＬＬＷＩＤＴＨ',  # ligature, full-width (ftfy)
    'mojibake cafÃ©',
    'ΣΊΣΥΦΟΣ UPPER CASE',
    'numbers 12345 3.14 1,000,000',
    '<start_of_text> special <end_of_text>',
    '<|endoftext|> other special',
    'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
    'supercalifragilisticexpialidocious ' * 30,  # over-long: truncated
    'x ' * 75,  # exactly 77 tokens with start/end: no truncation
    'x ' * 76,  # 78 tokens: truncated by one
]


@pytest.mark.parametrize('text', EDGE_CASES)
def test_edge_cases_match_open_clip(tok, text):
  np.testing.assert_array_equal(tok([text]), reference([text]))


def test_random_mixed_strings_match_open_clip(tok):
  alphabet = list('abcxyzABCXYZ0123456789 .,;:!?\'"&#<>-_/\\()[]{}\t\n') + [
      '&amp;', '&lt;', '\u2019', '\u201c', '\xe9', '\xdf', '\u0130', '\u03a3', '\ufb01', '\uff21',
      '\u5317', '\u3131', '\U0001f431', '\u0301', '\u200d', '\xa0', '\xc3\xa9', "'s", "'ll",
      '<start_of_text>', '<end_of_text>', '\u03c2', '\u01c5', '\xbd', '\xb2', '\u0663']
  rng = np.random.default_rng(0)
  texts = [''.join(rng.choice(alphabet, size=rng.integers(0, 40))) for _ in range(500)]
  np.testing.assert_array_equal(tok(texts), reference(texts))


def test_empty_string_is_start_end_then_padding(tok):
  expected = np.zeros((1, 77), np.int32)
  expected[0, :2] = [START, END]
  np.testing.assert_array_equal(tok(['']), expected)


def test_truncation_keeps_end_token_last(tok):
  fits, cut = tok(['x ' * 75, 'x ' * 76])
  x = tok.encoder['x</w>']
  np.testing.assert_array_equal(fits, [START] + [x] * 75 + [END])
  np.testing.assert_array_equal(cut, [START] + [x] * 75 + [END])
  long = tok(['word ' * 500])[0]
  assert long[0] == START and long[-1] == END and (long[1:-1] == tok.encoder['word</w>']).all()


def test_single_string_and_batch_agree(tok):
  np.testing.assert_array_equal(tok('a photo of a cat.'), tok(['a photo of a cat.']))
  assert tok([]).shape == (0, 77)


def test_non_string_input_is_rejected(tok):
  with pytest.raises(TypeError, match=r'Tokenizer: texts\[1\] must be a str, got int'):
    tok(['cat', 3])


def test_missing_bpe_file(tmp_path):
  path = str(tmp_path / 'nope.txt.gz')
  with pytest.raises(FileNotFoundError, match='BPE vocabulary not found: .*nope.txt.gz'):
    tokenizer_lib.Tokenizer(path)


def test_bad_bpe_files(tmp_path):
  not_gzip = tmp_path / 'plain.txt.gz'
  not_gzip.write_text('#version 0.2\na b\n')
  with pytest.raises(ValueError, match='plain.txt.gz: expected a gzip-compressed UTF-8 BPE'):
    tokenizer_lib.Tokenizer(str(not_gzip))
  short = tmp_path / 'short.txt.gz'
  with gzip.open(short, 'wt') as f:
    f.write('#version 0.2\nt h\nth e\n')
  with pytest.raises(ValueError, match=r'short.txt.gz: line 4: expected a merge rule "a b"'):
    tokenizer_lib.Tokenizer(str(short))
