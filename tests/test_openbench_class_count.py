"""Class-count study (Figure 5): distractor draws, exact oracle answers, the launcher end to end."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import smoke
from ovsnet_jax import sharding
from ovsnet_jax.input import IGNORE_LABEL, layouts, shapes
from ovsnet_jax.openbench import class_count
from ovsnet_jax.text import vocab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pool_excludes_the_dataset_names_and_draws_are_nested():
  pool = [['wall'], ['Bed', 'beds'], ['oystercatcher'], ['lamp'], ['door', 'double door'], ['lamp', 'light']]
  own = [['bed'], ['double door'], ['sky']]
  assert class_count.distractor_pool(pool, own) == [['wall'], ['oystercatcher'], ['lamp']]
  ade847 = class_count.distractor_pool(vocab.load_class_names('ade847'), vocab.load_class_names('ade150'))
  own150 = {s for c in vocab.load_class_names('ade150') for s in c}
  assert 0 < len(ade847) < 847 and not any(own150 & set(c) for c in ade847)
  small, large = (class_count.draw_distractors(ade847, k, seed=3) for k in (10, 40))
  assert large[:10] == small and len({c[0] for c in large}) == 40
  assert class_count.draw_distractors(ade847, 10, seed=4) != small
  with pytest.raises(ValueError, match=r'k=5: expected 0 <= k <= 3 \(the distractor pool size\)'):
    class_count.draw_distractors(pool[:3], 5, 0)


class OracleReader:
  """Shapes val whose image channel 0 holds label + 1, so a model can read the answer."""

  def __init__(self, n):
    self.ds = shapes.ShapesSemantic(shapes.ShapesPanoptic('val', n, 64))
    self.class_names = self.ds.class_names

  def __len__(self):
    return len(self.ds)

  def __getitem__(self, i):
    ex = self.ds[i]
    image = np.repeat((ex['sem_seg'] + 1).astype(np.uint8)[..., None], 3, -1)
    return {'image': image, 'sem_seg': ex['sem_seg'], 'file_name': ex['file_name']}


def confused_oracle(num_own):
  """Exact on the dataset's classes; the first distractor (if any) outscores class 0."""
  def semantic_fn(params, images, text):  # (B, Hp, Wp, 3) -> (B, Hp, Wp, K)
    k = text['embeds'].shape[0]
    label = jnp.clip(images[..., 0].astype(jnp.int32) - 1, 0, k - 1)
    prefix_ok = (text['embeds'][:, 0, 0] == jnp.arange(k)).astype(jnp.float32)  # (K,) row k holds k
    scores = jax.nn.one_hot(label, k) * prefix_ok * params
    if k > num_own:
      scores = scores.at[..., num_own].set(jnp.where(label == 0, 2.0, 0.0))
    return scores
  return semantic_fn


def test_oracle_loses_exactly_the_confused_class():
  config = smoke.get_config()
  config.eval.batch_size, config.eval.max_images = 2, 8
  reader = OracleReader(8)  # the first 8 held-out images of the shapes world contain class 0
  names = [list(c) for c in reader.class_names]
  calls = []

  def text_fn(n):  # one row per class: row k holds k, so prefixes can be checked
    calls.append(len(n))
    return {'embeds': np.arange(len(n), dtype=np.float32)[:, None, None] * np.ones((1, 1, 4), np.float32),
            'valid': np.ones((len(n), 1), bool)}
  study = class_count.run_study(config, confused_oracle(len(names)), jnp.float32(1.0), text_fn,
                                sharding.make_mesh(jax.devices()[:1]), 'shapes', reader, names,
                                vocab.load_class_names('ade847'), ks=[2, 0], seed=0, progress=False)
  labels = np.stack([reader[i]['sem_seg'] for i in range(8)])
  present = np.unique(labels[labels != IGNORE_LABEL])
  assert 0 in present
  valid = labels != IGNORE_LABEL
  k0, k2 = study['results']
  assert (k0['k'], k0['vocabulary_size'], k2['k'], k2['vocabulary_size']) == (0, len(names), 2, len(names) + 2)
  assert k0['mIoU'] == pytest.approx(100.0) and k0['pACC'] == pytest.approx(100.0)
  assert k2['mIoU'] == pytest.approx(100.0 * (len(present) - 1) / len(present))
  assert k2['pACC'] == pytest.approx(100.0 * (1 - (labels[valid] == 0).mean()))
  assert len(k2['distractors']) == 2 and study['num_classes'] == len(names)
  assert calls == [len(names) + 2]  # the text of the largest vocabulary, embedded once


def test_launcher_end_to_end_on_a_tiny_ade150_layout(tmp_path):
  d2, out = tmp_path / 'd2', tmp_path / 'out'
  layouts.write_ade150(str(d2), num_images=2, size=(40, 56))
  cmd = [sys.executable, 'launch/class_count_study.py', '--config=configs/smoke.py:tiny', '--dataset=ade150',
         f'--data_root={d2}', '--max_images=2', '--ks=0,3', '--pool=ade847', f'--out={out}',
         '--config.data.eval_size_from_dataset=False', '--config.data.eval_min_size=64',
         '--config.data.eval_max_size=96', '--config.eval.batch_size=1']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  study = json.loads((out / 'class_count.json').read_text())
  assert [r['k'] for r in study['results']] == [0, 3]
  assert [r['vocabulary_size'] for r in study['results']] == [150, 153]
  own = {s for c in vocab.load_class_names('ade150') for s in c}
  assert not own & set(study['results'][1]['distractors'])
  assert all(0.0 <= r['mIoU'] <= 100.0 for r in study['results'])
  assert study['pool'] == 'ade847' and study['dataset'] == 'ade150'
  assert 'k=   3  classes= 153' in proc.stdout
  with Image.open(out / 'class_count.png') as im:
    assert im.size[0] > 300
