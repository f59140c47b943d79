"""CLIP's byte-level BPE tokenizer, token-for-token identical to ``open_clip.tokenize``.

Why our own and not ``transformers.CLIPTokenizer``: built locally from the same BPE vocabulary
(vocab.json / merges.txt derived from the .gz), transformers 5.x's tokenizer (a ``tokenizers``
BPE with an NFC + whitespace + lowercase normaliser) differed from ``open_clip.tokenize`` on 7 of
18 probe inputs: html entities (``&amp;``), curly quotes, ligatures / full-width letters (open_clip
runs ``ftfy.fix_text`` and ``html.unescape`` twice), mojibake, Greek final sigma (Rust lowercasing
vs ``str.lower``), and the special-token strings (open_clip's regex matches ``<start_of_text>`` /
``<end_of_text>``, transformers' ``<|startoftext|>`` / ``<|endoftext|>``). Running open_clip's
cleaning in Python first still left the special-token cases different. The algorithm is short, so
we implement it here and test it against ``open_clip.tokenize`` on every shipped class name.

Pipeline per text: ``ftfy.fix_text`` -> ``html.unescape`` twice -> strip -> collapse whitespace ->
lower-case -> regex pre-tokenisation -> UTF-8 bytes mapped to printable unicode -> BPE merges.
Each row is ``[<start_of_text>, tokens..., <end_of_text>, 0, ...]``; rows longer than the context
are cut to ``context_length`` with the end token written into the last position.

Licence of the data file: ``bpe_simple_vocab_16e6.txt.gz`` is OpenAI's CLIP BPE vocabulary
(https://github.com/openai/CLIP, MIT License, Copyright (c) 2021 OpenAI), the same file that
open_clip ships. It is loaded from this package; nothing is downloaded.
"""
import gzip
import html
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import ftfy
import numpy as np
import regex

CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # merges used by CLIP: vocabulary 49408 = 512 byte symbols + merges + 2
START_TOKEN = '<start_of_text>'
END_TOKEN = '<end_of_text>'
END_OF_WORD = '</w>'
BPE_FILE_NAME = 'bpe_simple_vocab_16e6.txt.gz'


def default_bpe_path() -> str:
  """Path of the BPE vocabulary shipped with this package."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), BPE_FILE_NAME)


def byte_symbols() -> List[str]:
  """The 256 printable unicode symbols standing for bytes 0..255 (GPT-2's reversible byte map).

  Printable Latin-1 bytes map to themselves; the others (control, space, ...) are moved to code
  points 256, 257, ... in byte order.
  """
  printable = set(range(ord('!'), ord('~') + 1))
  printable |= set(range(ord('\xa1'), ord('\xac') + 1))
  printable |= set(range(ord('\xae'), ord('\xff') + 1))
  symbols, shifted = [], 0
  for b in range(256):
    if b in printable:
      symbols.append(chr(b))
    else:
      symbols.append(chr(256 + shifted))
      shifted += 1
  return symbols


def read_merges(bpe_path: str) -> List[Tuple[str, str]]:
  """Reads the first ``NUM_MERGES`` merge rules (pairs of symbols) of a CLIP BPE .gz file."""
  if not os.path.isfile(bpe_path):
    raise FileNotFoundError(f'BPE vocabulary not found: {bpe_path}')
  try:
    lines = gzip.open(bpe_path).read().decode('utf-8').split('\n')
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'{bpe_path}: expected a gzip-compressed UTF-8 BPE merge list ({e})') from e
  rules = lines[1:NUM_MERGES + 1]  # line 0 is a version header
  merges = []
  for n, line in enumerate(rules, start=2):
    pair = tuple(line.split())
    if len(pair) != 2:
      raise ValueError(f'{bpe_path}: line {n}: expected a merge rule "a b", got {line!r}')
    merges.append(pair)
  if len(merges) != NUM_MERGES:
    raise ValueError(f'{bpe_path}: expected at least {NUM_MERGES} merge rules, got {len(merges)}')
  return merges


def clean_text(text: str) -> str:
  """open_clip's 'lower' cleaning: fix unicode, unescape html (twice), collapse blanks, lower."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return ' '.join(text.split()).lower()


class Tokenizer:
  """Text -> CLIP token ids, identical to ``open_clip.tokenize``.

  Attributes:
    encoder: symbol -> id (49408 entries).
    start_id, end_id: ids of the start / end tokens (49406, 49407).
  """

  def __init__(self, bpe_path: Optional[str] = None, context_length: int = CONTEXT_LENGTH):
    self.bpe_path = bpe_path or default_bpe_path()
    self.context_length = context_length
    merges = read_merges(self.bpe_path)
    symbols = byte_symbols()
    base = sorted(symbols, key=ord)  # vocabulary order: printable bytes first, then shifted ones
    vocab = base + [s + END_OF_WORD for s in base] + [a + b for a, b in merges]
    vocab += [START_TOKEN, END_TOKEN]
    self.encoder: Dict[str, int] = {s: i for i, s in enumerate(vocab)}
    self.byte_map = symbols
    self.ranks: Dict[Tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
    self.start_id = self.encoder[START_TOKEN]
    self.end_id = self.encoder[END_TOKEN]
    self.pattern = regex.compile(
        START_TOKEN + '|' + END_TOKEN +
        r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE)
    # Words seen before -> their ids (this instance only); special tokens map to themselves.
    self._word_ids: Dict[str, List[int]] = {
        START_TOKEN: [self.start_id], END_TOKEN: [self.end_id]}

  @property
  def vocab_size(self) -> int:
    return len(self.encoder)

  def bpe(self, word: str) -> List[str]:
    """Merges the byte symbols of one pre-token; the last symbol carries the end-of-word mark."""
    parts = list(word[:-1]) + [word[-1] + END_OF_WORD]
    while len(parts) > 1:
      ranked = [(self.ranks.get(p, NUM_MERGES), p) for p in zip(parts[:-1], parts[1:])]
      rank, best = min(ranked, key=lambda rp: rp[0])
      if rank == NUM_MERGES:
        break
      merged, i = [], 0
      while i < len(parts):  # merge every non-overlapping occurrence, left to right
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    return parts

  def encode(self, text: str) -> List[int]:
    """Token ids of one text, without start/end tokens."""
    ids = []
    for piece in self.pattern.findall(clean_text(text)):
      if piece not in self._word_ids:
        word = ''.join(self.byte_map[b] for b in piece.encode('utf-8'))
        self._word_ids[piece] = [self.encoder[s] for s in self.bpe(word)]
      ids.extend(self._word_ids[piece])
    return ids

  def __call__(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
    """Tokenises texts.

    Args:
      texts: a string or a sequence of N strings.

    Returns:
      int32 (N, context_length): start, tokens, end, zero padding; over-long rows are truncated
      and end with the end token.
    """
    if isinstance(texts, str):
      texts = [texts]
    out = np.zeros((len(texts), self.context_length), np.int32)  # (N, 77)
    for n, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f'Tokenizer: texts[{n}] must be a str, got {type(text).__name__}')
      ids = [self.start_id] + self.encode(text) + [self.end_id]
      if len(ids) > self.context_length:
        ids = ids[:self.context_length - 1] + [self.end_id]
      out[n, :len(ids)] = ids
    return out
