"""Benchmarks: speed and memory figures, never asserted in tests.

Usage:
  python launch/benchmark.py --mode=trunk --variant=convnext_base_w_320 --batch=8 --size=1024
  python launch/benchmark.py --mode=inference   # OVSNet-B inference img/s
  python launch/benchmark.py --mode=train       # OVSNet-B train step img/s, peak memory
  python launch/benchmark.py --mode=deform      # deformable-attention implementations
  python launch/benchmark.py --mode=pipeline    # input pipeline img/s per host

Each mode lives in ovsnet_jax/benchmarks/<mode>.py and prints a JSON line of figures;
--out=FILE also writes it.
"""
import argparse
import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs` importable

MODES = ('trunk', 'deform', 'inference', 'train', 'pipeline')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--mode', choices=MODES, required=True)
  parser.add_argument('--out', default='', help='also write the figures as JSON to this file')
  args, rest = parser.parse_known_args(argv)
  module = importlib.import_module(f'ovsnet_jax.benchmarks.{args.mode}')
  figures = module.run(rest)
  line = json.dumps(figures, sort_keys=True)
  print(line)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(line + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
