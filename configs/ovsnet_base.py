r"""OVSNet-B: ConvNeXt-B CLIP (convnext_base_w_320, D 640), 100 queries, COCO-Panoptic training.

Paper recipe (Section 5.2): batch 8, 60k iterations, lr 1e-4 poly, weight decay 0.05, 1024 crops,
lambda 0.2, gamma 2. Train (both GFA and PC, the paper's OVSNet):

  python launch/train.py --config=configs/ovsnet_base.py --workdir=/ckpt/ovsnet_b \
      --config.data.root=$DETECTRON2_DATASETS --config.clip_checkpoint=/ckpt/clip/convnext_base_w_320

Ablations are parsed from the config argument (`:key=value,...`):

  Table 3   baseline   configs/ovsnet_base.py:fusion=none,pc=false
            +GFA       configs/ovsnet_base.py:fusion=gfa,pc=false
            +PC        configs/ovsnet_base.py:fusion=none,pc=true
            both       configs/ovsnet_base.py            (= fusion=gfa,pc=true,gamma=2)
  Table 4a  self-attn  configs/ovsnet_base.py:fusion=self_attn,pc=false
            cross-attn configs/ovsnet_base.py:fusion=cross_attn,pc=false
            GFA        configs/ovsnet_base.py:fusion=gfa,pc=false
  Table 4b  gamma      configs/ovsnet_base.py:fusion=none,gamma=0.5   (also gamma=1, gamma=2;
                       the paper reports gamma=1 equal to no PC: compare with pc=false)

Other keys: affinity=per_query|query|channel|random_walk, norm=softmax|l1|none, omega, lam,
mode=closed_form|iterative, classify=fused_clip|fused_query|average, queries, ensemble=true|false. Any
field can still be overridden with --config.model.gfa.omega=0.3 etc. Evaluate with launch/eval.py, segment one image
with launch/demo.py (same --config).
"""
import ml_collections

from configs import common

ARG_DEFAULTS = dict(fusion='gfa', pc=True, gamma=2.0, affinity='per_query', norm='softmax', omega=0.5, lam=0.2,
                    mode='closed_form', classify='fused_clip', queries=0, ensemble=True)


def _parse_value(key: str, text: str, default):
  if isinstance(default, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'config arg {key}={text!r}: expected true or false')
    return text.lower() in ('true', '1')
  try:
    return type(default)(text)
  except ValueError:
    raise ValueError(f'config arg {key}={text!r}: expected a {type(default).__name__}') from None


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """big_vision-style 'key=value,key=value' -> ConfigDict over ``defaults`` (typed like them)."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'config arg {key!r}: unknown; expected one of {sorted(defaults)}')
    out[key] = _parse_value(key, value.strip(), defaults[key]) if sep else True
  return out


def apply_args(c: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Writes the parsed ablation switches into the full config."""
  m = c.model
  m.fusion = a.fusion
  m.gfa.affinity, m.gfa.norm, m.gfa.omega, m.gfa.lam = a.affinity, a.norm, a.omega, a.lam
  m.gfa.mode, m.gfa.classify = a.mode, a.classify
  m.ensemble.enabled = a.ensemble
  if a.queries:
    m.decoder.num_queries = a.queries
  c.train.proxy_calibration.enabled = a.pc
  c.train.proxy_calibration.gamma = a.gamma
  from ovsnet_jax.models import ovsnet  # pylint: disable=g-import-not-at-top
  ovsnet.check_model_config(m)  # fail at config time on a bad switch
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, **ARG_DEFAULTS)
  c = common.get_base_config()
  c.model = common.get_model_config('convnext_base_w_320')
  c.model.decoder.num_queries = 100
  c.data.train = 'coco_panoptic'
  c.eval.dataset = 'ade150'
  return apply_args(c, a)
