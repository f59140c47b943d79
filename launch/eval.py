r"""Evaluates OVSNet semantic segmentation (mIoU, fwIoU, pACC, mACC, seen/unseen) on one benchmark.

  python launch/eval.py --config=configs/ovsnet_base.py --clip=CLIP_DIR --checkpoint=WORKDIR \
      --dataset=ade150 --data_root=$DETECTRON2_DATASETS
  # quick look: --max_images=50; per-class IoU: --per_class; results JSON: --out=FILE
  # any config field: --config.eval.batch_size=8 --config.eval.pad_mode=multiple

--checkpoint is a training workdir, its `checkpoints/` folder or one `checkpoints/<step>` folder
(the latest step is used), or an FC-CLIP weights file (FC-CLIP's released fcclip_cocopan.pth with
--config=configs/ovsnet_large.py:fusion=none, or --fusion=gfa for training-free GFA; its own CLIP is
used unless --clip is given); without it the decoder is randomly initialised (pipeline checks only).
The text classifier is cached in the user cache (~/.cache/ovsnet_jax/text; --text_cache=none: off).
The test-time resize is the dataset's (800/1333, Cityscapes 1024/2560) unless
--config.data.eval_size_from_dataset=False (then data.eval_min_size / eval_max_size).
"""
import os
import sys

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

# pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax import cli
from ovsnet_jax import evaluate
from ovsnet_jax import loading
from ovsnet_jax import sharding

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_CLIP = flags.DEFINE_string('clip', '', 'Converted CLIP directory (launch/convert_open_clip.py); '
                            "'' -> config.clip_checkpoint.")
_CHECKPOINT = flags.DEFINE_string('checkpoint', '', "Training workdir / checkpoint or FC-CLIP .pth; '' -> random "
                                  'decoder.')
_FUSION = flags.DEFINE_enum('fusion', None, ['none', 'gfa'], "Override model.fusion ('gfa' on FC-CLIP weights: "
                            'training-free GFA).')
_DATASET = flags.DEFINE_string('dataset', '', "Dataset name (datasets.DATASETS or 'shapes'); '' -> config.eval.dataset.")
_DATA_ROOT = flags.DEFINE_string('data_root', '', "$DETECTRON2_DATASETS folder; '' -> config.data.root.")
_MAX_IMAGES = flags.DEFINE_integer('max_images', -1, 'Evaluate the first N images; -1 -> config.eval.max_images.')
_OUT = flags.DEFINE_string('out', '', "Results JSON; '' -> config.eval.output, else <checkpoint>/eval_<dataset>.json.")
_PER_CLASS = flags.DEFINE_bool('per_class', False, 'Print the per-class IoU table.')
_CACHE_DIR = flags.DEFINE_string('text_cache', '', "Text-classifier cache; '' -> config.text.cache_dir or the user "
                                 "cache, 'none' -> off.")
flags.mark_flags_as_required(['config'])


def output_path(config, checkpoint: str, dataset: str) -> str:
  if _OUT.value or config.eval.output:
    return _OUT.value or config.eval.output
  base = checkpoint if checkpoint and os.path.isdir(checkpoint) else '.'
  return os.path.join(base, f'eval_{dataset}.json')


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
  mesh = sharding.make_mesh()
  loaded = loading.load_model(config, _CHECKPOINT.value, _CLIP.value, _CACHE_DIR.value, _FUSION.value)
  if not _CHECKPOINT.value:
    logging.warning('No --checkpoint: evaluating a randomly initialised decoder.')
  params = jax.device_put(loaded.params, sharding.replicated(mesh))
  classify, model, config = loaded.classify, loaded.model, loaded.config
  del loaded
  res = evaluate.evaluate_dataset(config, evaluate.ovsnet_semantic_fn(model), params, classify, mesh,
                                  progress=jax.process_index() == 0)
  if jax.process_index() == 0:
    print(evaluate.format_table(res, per_class=_PER_CLASS.value or config.eval.per_class), flush=True)
    path = output_path(config, _CHECKPOINT.value, config.eval.dataset)
    evaluate.write_results(res, path)
    print(f'wrote {path}', flush=True)


if __name__ == '__main__':
  cli.run(main)
