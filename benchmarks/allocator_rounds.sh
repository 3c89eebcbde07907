#!/bin/bash
# Allocator wall-clock rounds (results/allocator.md, "Idle machine"): glibc defaults vs the CLI's mallopt vs tcmalloc,
# a fresh process per setting, order alternated per round. Run from the repository root on an idle machine.
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src
PY=${PYTHON:-python}
TC=${TCMALLOC:-/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4}  # Debian libtcmalloc-minimal4
for secs in 1 4; do
 for r in 0 1 2; do
  if [ $r = 1 ]; then order="tcmalloc mallopt default"; else order="default mallopt tcmalloc"; fi
  for m in $order; do
   sleep 1
   if [ $m = tcmalloc ]; then LD_PRELOAD=$TC $PY benchmarks/allocator.py tcmalloc $secs 5; else $PY benchmarks/allocator.py $m $secs 5; fi
  done
 done
done
