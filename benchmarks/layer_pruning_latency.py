"""Re-measure the latency of the fine-tuned depth-k models of ``benchmarks/layer_pruning.py`` fairly.

The per-depth latencies recorded during the experiment were taken while other jobs shared the two cores, some of
them under heavy load. Here every model of a task is timed in **interleaved rounds** (model 1, 2, …, 6, then again)
on one thread, so that any background load hits all depths alike, and the median over rounds is reported with
the load average. Written to ``benchmarks/results/layer_pruning_whisper-base/<task>/latency.json`` and merged into
``depths.md``/``summary.json`` by re-running ``benchmarks/layer_pruning.py`` (which reads it if present).

    python benchmarks/layer_pruning_latency.py [TASK ...] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from speechprune.models import load_encoder
from speechprune.models.classifier import classifier_inputs
from speechprune.utils.io import write_json_atomic

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "layer_pruning_whisper-base"
WORK = Path(os.environ.get("SPEECHPRUNE_CACHE", Path.home() / ".cache" / "speechprune")) / "experiments" / "layer_pruning"
WINDOWS = {"fsdd-word": 1.0, "fsdd-speaker": 1.0, "emodb-emotion": 2.0}


@torch.inference_mode()
def measure(task: str, rounds: int) -> dict:
    torch.set_num_threads(1)
    dirs = sorted(WORK.joinpath(task).glob("depth*"), key=lambda p: int(p.name[5:]))
    encs = [load_encoder(str(d)) for d in dirs]
    wav = [np.random.default_rng(0).standard_normal(int(WINDOWS[task] * 16_000)).astype(np.float32) * 0.1]
    inputs = [classifier_inputs(e, wav) for e in encs]
    for e, x in zip(encs, inputs):  # warm-up
        for _ in range(3):
            e.model(**x)
    times = [[] for _ in encs]
    load0 = os.getloadavg()[0]
    for _ in range(rounds):
        for k, (e, x) in enumerate(zip(encs, inputs)):
            t0 = time.perf_counter()
            e.model(**x)
            times[k].append(1000 * (time.perf_counter() - t0))
    res = {"task": task, "threads": 1, "rounds": rounds, "window_s": WINDOWS[task], "batch": 1,
           "load_avg_before_after": [load0, os.getloadavg()[0]],
           "median_ms": {str(int(d.name[5:])): float(np.median(t)) for d, t in zip(dirs, times)},
           "p90_ms": {str(int(d.name[5:])): float(np.percentile(t, 90)) for d, t in zip(dirs, times)}}
    write_json_atomic(RESULTS / task / "latency.json", res)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tasks", nargs="*", default=list(WINDOWS))
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    for t in a.tasks:
        r = measure(t, a.rounds)
        print(t, {k: round(v, 1) for k, v in r["median_ms"].items()}, "load", r["load_avg_before_after"])


if __name__ == "__main__":
    main()
