#!/bin/bash
# Each of issue 13's changed defaults set back to its previous value, on the smoke config as
# launch/ablate.py runs t3_both (300 steps, eval 100 images, seed 0).
cd "$(dirname "$0")/../../.."

COMMON="--config=configs/smoke.py --config.train.num_steps=300 --config.train.eval_every=300 --config.train.checkpoint_every=300 --config.eval.max_images=100"
for v in "control" \
         "keep_cropped --config.data.keep_cropped_segments=False" \
         "no_decay --config.train.no_decay=all_1d" \
         "warmup --config.train.warmup_factor=0.001" \
         "pc_sources --config.train.proxy_calibration.query_source=query_embeds --config.train.proxy_calibration.clip_source=fused_embeds"; do
  set -- $v; name=$1; shift
  echo "=== $name $(date)"
  PYTHONPATH=$PWD JAX_PLATFORMS=cpu python launch/train.py $COMMON "$@" --workdir=/tmp/issue13_defaults_$name 2>&1 | grep "final step"
done
echo ALLDONE
