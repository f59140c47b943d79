r"""Figure 5: a checkpoint's mIoU on one dataset as k irrelevant classes join the vocabulary.

  python launch/class_count_study.py --config=configs/ovsnet_base.py --clip=CLIP_DIR \
      --checkpoint=WORKDIR --dataset=ade150 --data_root=$DETECTRON2_DATASETS \
      --ks=0,50,100,200,400,600 --pool=ade847 --seed=0 --out=out/class_count_ade150

The k distractors are drawn (nested, seeded) from --pool (a shipped vocabulary or a class-name
file) minus every class sharing a name with the dataset's own (ovsnet_jax/openbench/class_count.py).
Writes --out/class_count.json (per k: vocabulary size, mIoU, fwIoU, mACC, pACC, the distractors)
and --out/class_count.png. Evaluation settings as launch/eval.py (--max_images, --config.eval.*).
"""
import json
import os
import sys

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax import cli
from ovsnet_jax import evaluate
from ovsnet_jax import loading
from ovsnet_jax import sharding
from ovsnet_jax.openbench import class_count
from ovsnet_jax.text import vocab

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_CLIP = flags.DEFINE_string('clip', '', "Converted CLIP directory; '' -> config.clip_checkpoint.")
_CHECKPOINT = flags.DEFINE_string('checkpoint', '', "Training workdir / checkpoint or FC-CLIP .pth; '' -> random "
                                  'decoder.')
_DATASET = flags.DEFINE_string('dataset', '', "Dataset name; '' -> config.eval.dataset.")
_DATA_ROOT = flags.DEFINE_string('data_root', '', "$DETECTRON2_DATASETS folder; '' -> config.data.root.")
_MAX_IMAGES = flags.DEFINE_integer('max_images', -1, 'Evaluate the first N images; -1 -> config.')
_KS = flags.DEFINE_list('ks', ['0', '50', '100', '200', '400'], 'Numbers of irrelevant classes.')
_POOL = flags.DEFINE_string('pool', 'ade847', 'Distractor pool: shipped vocabulary or class-name file.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the distractor draw.')
_OUT = flags.DEFINE_string('out', '', 'Output directory (class_count.json, class_count.png).')
_CACHE_DIR = flags.DEFINE_string('text_cache', '', "Text-classifier cache; '' -> config.text.cache_dir or the user "
                                 "cache, 'none' -> off.")
flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logs()
  config = _CONFIG.value
  if _DATASET.value:
    config.eval.dataset = _DATASET.value
  if _DATA_ROOT.value:
    config.data.root = _DATA_ROOT.value
  if _MAX_IMAGES.value >= 0:
    config.eval.max_images = _MAX_IMAGES.value
  try:
    ks = [int(k) for k in _KS.value]
  except ValueError as e:
    raise cli.UserError(f'--ks: expected comma-separated integers, got {_KS.value}') from e
  pool = vocab.resolve_vocabulary(_POOL.value)  # a typo fails before the model loads
  mesh = sharding.make_mesh()
  loaded = loading.load_model(config, _CHECKPOINT.value, _CLIP.value, _CACHE_DIR.value)
  if not _CHECKPOINT.value:
    logging.warning('No --checkpoint: evaluating a randomly initialised decoder.')
  params = jax.device_put(loaded.params, sharding.replicated(mesh))
  classify, model, config = loaded.classify, loaded.model, loaded.config
  del loaded
  dataset = config.eval.dataset
  reader = evaluate.eval_reader(config, dataset)
  names, _ = evaluate.dataset_vocabulary(config, dataset, reader)
  study = class_count.run_study(config, evaluate.ovsnet_semantic_fn(model), params, classify, mesh, dataset,
                                reader, names, pool, ks, seed=_SEED.value,
                                progress=jax.process_index() == 0)
  study.update({'pool': _POOL.value, 'checkpoint': _CHECKPOINT.value})
  if jax.process_index() == 0:
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, 'class_count.json'), 'w', encoding='utf-8') as f:
      json.dump(study, f, indent=1)
    class_count.plot_study(study, os.path.join(_OUT.value, 'class_count.png'))
    for r in study['results']:
      print(f"k={r['k']:4d}  classes={r['vocabulary_size']:4d}  mIoU={r['mIoU']:6.2f}", flush=True)
    print(f'wrote {_OUT.value}', flush=True)


if __name__ == '__main__':
  cli.run(main)
