"""Allocator cost of the bare wav2vec2-base forward (random weights, all hidden states), one process per setting.

Prints one JSON line: median ms per forward of SECONDS × 8 clips, minor page faults and system seconds per forward.
Run each setting in a fresh process, alternating (the allocator is process-wide):

    python benchmarks/allocator.py default 1 3
    python benchmarks/allocator.py mallopt 1 3          # the settings the CLI applies (speechprune.utils.malloc)
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/allocator.py tcmalloc 1 3
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python benchmarks/allocator.py jemalloc 1 3

(tcmalloc: Debian package libtcmalloc-minimal4; jemalloc: libjemalloc2.) Results: results/allocator.md.
"""

import json
import os
import resource
import statistics
import sys
import time

mode, secs, reps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
if mode == "mallopt":
    from speechprune.utils.malloc import tune_allocator

    assert tune_allocator()
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

torch.manual_seed(0)
model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config()).eval()
x = torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal((8, int(secs * 16000)))).astype(np.float32))


def forward() -> None:
    with torch.inference_mode():
        model(x, output_hidden_states=True)


forward()
times = []
before = resource.getrusage(resource.RUSAGE_SELF)
for _ in range(reps):
    t = time.perf_counter()
    forward()
    times.append(time.perf_counter() - t)
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"mode": mode, "secs": secs, "ms": round(statistics.median(times) * 1000),
                  "all": [round(t * 1000) for t in times], "minflt_per_fwd": (after.ru_minflt - before.ru_minflt) // reps,
                  "sys_s_per_fwd": round((after.ru_stime - before.ru_stime) / reps, 3), "load": os.getloadavg()[0]}))
