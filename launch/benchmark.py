"""Benchmarks: speed and memory figures, never asserted in tests.

Usage:
  python launch/benchmark.py --mode=trunk --variant=convnext_base_w_320 --batch=8 --size=1024
  python launch/benchmark.py --mode=inference   # OVSNet-B inference img/s
  python launch/benchmark.py --mode=train       # OVSNet-B train step img/s, peak memory
  python launch/benchmark.py --mode=deform      # deformable-attention implementations
  python launch/benchmark.py --mode=pipeline    # input pipeline img/s per host
  python launch/benchmark.py --mode=criterion   # matching + losses, sampling budget vs all slots
  python launch/benchmark.py --mode=peer        # OVSNet-B vs the PyTorch peer, same run
  python launch/benchmark.py --mode=text        # vocabulary text encoding, trimmed vs 77 tokens

`launch/benchmark.py --mode=X --help` shows mode X's flags.

Each mode lives in ovsnet_jax/benchmarks/<mode>.py and prints a JSON line of figures;
--out=FILE also writes it.
"""
import argparse
import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

from ovsnet_jax import atomic_io  # pylint: disable=g-import-not-at-top,wrong-import-position

MODES = ('trunk', 'deform', 'inference', 'train', 'pipeline', 'criterion', 'peer', 'text')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, add_help=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('-h', '--help', action='store_true', help="this help, or with --mode that mode's")
  parser.add_argument('--mode', choices=MODES, default=None)
  parser.add_argument('--out', default='', help='also write the figures as JSON to this file')
  args, rest = parser.parse_known_args(argv)
  if args.mode is None:
    if args.help:
      parser.print_help()
      return 0
    parser.error(f'--mode is required (one of {", ".join(MODES)})')
  module = importlib.import_module(f'ovsnet_jax.benchmarks.{args.mode}')
  if args.help:
    module.run(['--help'])  # every mode parses its flags first: argparse prints them and exits
  figures = module.run(rest)
  line = json.dumps(figures, sort_keys=True)
  print(line)
  if args.out:
    with atomic_io.open_atomic(args.out) as f:
      f.write(line + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
