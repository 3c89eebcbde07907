#!/usr/bin/env bash
# The shared bundle (../shared/tools/gpu/make-bundle.sh: wheels, Whisper tiny.en classifier, FSDD) plus what this
# project's GPU check needs on top: pytest's wheels (the GPU image has no pytest) and benchmarks/gpu/gpu-check.sh.
# Run from the project root after `make setup`:   bash benchmarks/gpu/make-bundle.sh
set -euo pipefail
root=$(git rev-parse --show-toplevel); cd "$root"
PY=${PY:-.venv/bin/python}
bash ../shared/tools/gpu/make-bundle.sh
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform any -d .devwork/whl \
  "pytest==$(ver pytest)" "pluggy==$(ver pluggy)" "iniconfig==$(ver iniconfig)" "packaging==$(ver packaging)" \
  "pygments==$(ver pygments)"
cp benchmarks/gpu/gpu-check.sh .devwork/gpu-check.sh
du -sh .devwork
echo "on the GPU machine, from the project root: OUT=/tmp/gpu-out bash benchmarks/gpu/gpu-check.sh"
