r"""Pretrains the shapes world's CLIP (or finds it cached) and prints its zero-shot accuracy.

  python launch/pretrain_clip.py                       # default settings, ~/.cache/ovsnet_jax/clip/...
  python launch/pretrain_clip.py --steps=300 --out=/tmp/my_clip

The directory it writes is a converted CLIP (as launch/convert_open_clip.py writes): pass it as
`--config.clip_checkpoint`. `configs/smoke.py` does not need this launcher: `launch/train.py`
builds the cached CLIP of `config.clip_pretrain` on first use. $OVSNET_CACHE moves the cache.
"""
import dataclasses
import json
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ovsnet_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from ovsnet_jax import clip_pretraining  # pylint: disable=g-import-not-at-top,wrong-import-position

_DEFAULTS = clip_pretraining.Settings()
_FLAGS = {f.name: (flags.DEFINE_string if f.type in (str, 'str') else
                   flags.DEFINE_bool if f.type in (bool, 'bool') else
                   flags.DEFINE_float if f.type in (float, 'float') else flags.DEFINE_integer)(
                       f.name, getattr(_DEFAULTS, f.name), f'Settings.{f.name}')
          for f in dataclasses.fields(clip_pretraining.Settings)}
_OUT = flags.DEFINE_string('out', '', "Output directory; '' -> the cache entry of these settings.")


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_logs()
  try:
    settings = clip_pretraining.Settings(**{k: v.value for k, v in _FLAGS.items()})
    settings.check()
  except ValueError as e:
    raise cli.UserError(str(e)) from e
  if _OUT.value:
    out = os.path.abspath(_OUT.value)
    if os.path.exists(out):
      raise cli.UserError(f'--out {out} exists; choose a new directory')
    report = clip_pretraining.pretrain(settings, out)
  else:
    out = clip_pretraining.ensure_pretrained(settings)
    with open(clip_pretraining.report_path(out)) as f:
      report = json.load(f)
  zs = report['zero_shot']
  print(f"CLIP {out}\nzero-shot accuracy (held-out images): seen {zs['acc_seen']:.1f}%, unseen "
        f"{zs['acc_unseen']:.1f}%; per class {json.dumps({k: round(v) for k, v in zs['per_class'].items()})}",
        flush=True)
  if 'dense' in report:  # reports written before the dense figures existed lack them
    print(clip_pretraining.dense_summary(report['dense']), flush=True)


if __name__ == '__main__':
  cli.run(main)
