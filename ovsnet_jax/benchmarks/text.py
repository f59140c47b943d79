"""Text-encoder benchmark: encoding a vocabulary's prompts with and without context trimming.

Builds `TextClassifier.from_params` for a CLIP variant's text tower (random weights: the cost does
not depend on them) twice, `trim=True` (each chunk of shortest-first prompts cut after its longest
prompt, `clip_text.trim_tokens`) and `trim=False` (all 77 positions), and embeds the same synonyms
with both, interleaved, `--repeats` times. Reports the median process (CPU) and wall time of each,
their ratio, the largest difference between the two embeddings (the trimming is exact, so float
reassociation only), and the same times per prompt extrapolated to the whole vocabulary.

  python launch/benchmark.py --mode=text --vocab=ade150 --variant=convnext_base_w_320 --fraction=0.1
  python launch/benchmark.py --mode=text --vocab=ade150 --fraction=1 --repeats=1   # the whole vocabulary

`--fraction` takes every k-th synonym (k = round(1/fraction)), which keeps the vocabulary's mix of
prompt lengths; untrimmed encoding of all of ade150 with the ConvNeXt-B tower is ~20 min on 2 cores.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ovsnet_jax.models import clip
from ovsnet_jax.models import clip_text
from ovsnet_jax.text import classifier
from ovsnet_jax.text import templates as templates_lib
from ovsnet_jax.text import vocab


def parse(argv) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='benchmark --mode=text')
  p.add_argument('--vocab', default='ade150', help='a shipped vocabulary name, a file, or "a,b|c"')
  p.add_argument('--variant', default='convnext_base_w_320', help='CLIP variant whose text tower runs')
  p.add_argument('--fraction', type=float, default=0.1, help='share of the synonyms encoded (every k-th)')
  p.add_argument('--chunk', type=int, default=256, help='prompts per encoder call')
  p.add_argument('--repeats', type=int, default=2, help='interleaved timed runs per setting')
  a = p.parse_args(argv)
  if not 0 < a.fraction <= 1:
    p.error(f'--fraction must be in (0, 1], got {a.fraction}')
  return a


def run(argv) -> dict:
  a = parse(argv)
  synonyms = [s for names in vocab.resolve_vocabulary(a.vocab) for s in names]
  step = max(1, round(1 / a.fraction))
  subset = synonyms[::step]
  n_templates = len(templates_lib.VILD_TEMPLATES)
  tokens = jnp.zeros((1, clip.get_variant(a.variant).context_length), jnp.int32)
  params = clip_text.CLIPText(a.variant).init(jax.random.PRNGKey(0), tokens)['params']
  encoders = {trim: classifier.TextClassifier.from_params(a.variant, params, chunk_size=a.chunk, trim=trim,
                                                           progress=False) for trim in (True, False)}
  figures = {'mode': 'text', 'vocab': a.vocab, 'variant': a.variant, 'synonyms': len(synonyms),
             'prompts': len(synonyms) * n_templates, 'timed_prompts': len(subset) * n_templates,
             'chunk': a.chunk}
  for trim, enc in encoders.items():  # compile each trimmed length once outside the timing
    t0 = time.perf_counter()
    enc.embed_synonyms(subset)
    figures[f'first_call_s_{"trim" if trim else "full"}'] = round(time.perf_counter() - t0, 2)
  cpu, wall, out = {True: [], False: []}, {True: [], False: []}, {}
  for _ in range(a.repeats):
    for trim, enc in encoders.items():
      c0, w0 = time.process_time(), time.perf_counter()
      out[trim] = enc.embed_synonyms(subset)
      cpu[trim].append(time.process_time() - c0)
      wall[trim].append(time.perf_counter() - w0)
  for trim in (True, False):
    name = 'trim' if trim else 'full'
    figures[f'cpu_s_{name}'] = round(float(np.median(cpu[trim])), 2)
    figures[f'wall_s_{name}'] = round(float(np.median(wall[trim])), 2)
    figures[f'wall_s_{name}_whole_vocab'] = round(
        figures[f'wall_s_{name}'] * len(synonyms) / len(subset), 1)
  figures['cpu_speedup'] = round(figures['cpu_s_full'] / figures['cpu_s_trim'], 2)
  figures['wall_speedup'] = round(figures['wall_s_full'] / figures['wall_s_trim'], 2)
  figures['max_abs_diff'] = float(np.abs(out[True] - out[False]).max())
  return figures
