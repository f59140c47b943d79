#!/usr/bin/env bash
# Installs the package with its test extras and runs the whole test suite on the CPU.
#
# torch/torchvision/open_clip are only for the parity tests against open_clip and transformers'
# Mask2Former. open_clip imports torchvision; torch 2.14 + torchvision 0.29 are a matching pair
# that imports cleanly (the CPU-only torch 2.13 some machines carry has no torchvision that does).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check "torch==2.14.*" "torchvision==0.29.*"
python3 -m pip install -q --disable-pip-version-check -e ".[test]"
export JAX_PLATFORMS=cpu
set +e
python3 -m pytest -q -n 2 --durations=20 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
