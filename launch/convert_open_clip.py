"""Converts an open_clip CLIP checkpoint to ovsnet_jax's Flax checkpoint directory.

Usage:
  python launch/convert_open_clip.py --model convnext_base_w_320 \
    --checkpoint open_clip_pytorch_model.bin --out checkpoints/clip_convnext_base_w_320
  python launch/convert_open_clip.py --model convnext_large_d_320 \
    --checkpoint open_clip_model.safetensors --out checkpoints/clip_convnext_large_d_320

--checkpoint is an open_clip weight file: `.safetensors`, or a torch file (`.bin`/`.pt`) read
with `torch.load(weights_only=True)` (a bare state dict or open_clip's {'state_dict': ...}).
The output directory holds `params/` (orbax), `clip_config.json` and the BPE vocabulary; it is
written atomically and an existing one is refused unless --overwrite.
Needs torch for `.bin`/`.pt` files (`pip install -e .[convert]`).
"""
import argparse
import sys

from ovsnet_jax import cli
from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.models import clip


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', required=True, choices=sorted(clip.CLIP_VARIANTS),
                      help='open_clip model name')
  parser.add_argument('--checkpoint', required=True, help='open_clip .safetensors/.bin/.pt file')
  parser.add_argument('--out', required=True, help='output checkpoint directory')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')
  args = parser.parse_args(argv)
  out = convert.convert_checkpoint(args.model, args.checkpoint, args.out, overwrite=args.overwrite)
  print(f'Wrote {out}')
  return 0


if __name__ == '__main__':
  cli.run_argparse(main, expected=(ValueError,))  # ValueError: a bad input named by its message
