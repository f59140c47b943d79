r"""OVSNet-L: ConvNeXt-L CLIP (convnext_large_d_320, D 768, MLP head), 250 queries (FC-CLIP-L).

  python launch/train.py --config=configs/ovsnet_large.py --workdir=/ckpt/ovsnet_l \
      --config.data.root=$DETECTRON2_DATASETS --config.clip_checkpoint=/ckpt/clip/convnext_large_d_320

Same ablation switches as configs/ovsnet_base.py, e.g. `configs/ovsnet_large.py:fusion=none,pc=false`.
"""
import ml_collections

from configs import common
from configs import ovsnet_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = ovsnet_base.parse_arg(arg, **ovsnet_base.ARG_DEFAULTS)
  c = common.get_base_config()
  c.model = common.get_model_config('convnext_large_d_320')
  c.model.decoder.num_queries = 250
  c.data.train = 'coco_panoptic'
  c.eval.dataset = 'ade150'
  return ovsnet_base.apply_args(c, a)
