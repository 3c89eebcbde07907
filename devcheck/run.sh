#!/bin/bash
cd "$(dirname "$0")/.."
PY=""
for p in python3 python /usr/bin/python3; do
  if $p -c "import torch, numba, scipy, numpy" 2>/dev/null; then PY=$p; break; fi
done
echo "python: $PY"; nproc; lscpu | grep -m1 "Model name"
if [ -z "$PY" ]; then for p in python3 python; do $p -c "import sys; print(sys.version)"; $p -m pip list 2>/dev/null | grep -i "torch\|numba\|numpy\|scipy"; done; exit 3; fi
$PY -c "import torch, numba; print(torch.__version__, numba.__version__)"
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2 NUMBA_CACHE_DIR=/tmp/nbcache
T="taskset -c 2,3"
$T $PY devcheck/blocks.py 1000 1,2,3,4,5,8 10 2>&1 | tail -8
$T $PY devcheck/cmp.py 1000 10 2>&1 | tail -1
$T $PY devcheck/blocks.py 5000 3,5,8 3 2>&1 | tail -4
$T $PY devcheck/cmp.py 5000 3 2>&1 | tail -1
