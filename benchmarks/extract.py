"""Extraction throughput against the machine's measured matmul peak.

Reports clips/s and achieved GFLOP/s (2 × analytic MACs × clips/s) of ``extract_features`` — the real code path:
input preparation, one forward pass with all states hooked, padding-aware pooling, shard writes and
consolidation — for a base-sized model on 1 s clips, batch 8, in fp32 and bf16, against the peak GEMM rate
measured in the same process (torch.mm 4096³).

Usage (writes benchmarks/results/extract.{json,md}):

    python benchmarks/extract.py --clips 96 --repeats 3
    python benchmarks/extract.py --model default:hubert --clips 48

Timing depends only on shapes, so randomly initialised base configs stand in for the real checkpoints.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from speechprune.data.types import AudioDataset, AudioItem
from speechprune.features import extract_features
from speechprune.models import load_encoder
from speechprune.profile.macs import count_macs
from speechprune.utils.hardware import cpu_has_fast_bf16, cpu_model, matmul_peak_gflops
from speechprune.utils.io import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).parent / "results"


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of an n³ product: the ceiling the forward pass is measured against."""
    return matmul_peak_gflops(dtype, n, repeats)


def noise_dataset(n: int, seconds: float, seed: int) -> AudioDataset:
    rng = np.random.default_rng(seed)
    length = int(seconds * 16000)
    items = [
        AudioItem(f"c{i}", {"y": str(i % 10)}, array=(0.1 * rng.standard_normal(length)).astype(np.float32),
                  sampling_rate=16000)
        for i in range(n)
    ]
    return AudioDataset(items, ["y"], name=f"noise{n}x{seconds}s-{seed}")


def run(model: str, clips: int, seconds: float, batch: int, dtype: str, repeats: int) -> dict:
    enc = load_encoder(model)
    macs_per_clip = count_macs(enc.model, int(seconds * 16000))
    times = []
    for r in range(repeats + 1):  # first run is warm-up
        ds = noise_dataset(clips, seconds, seed=r)
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            extract_features(enc, ds, batch_size=batch, dtype=dtype, cache_dir=cache, progress=False)
            elapsed = time.perf_counter() - t
        if r > 0:
            times.append(elapsed)
    med = statistics.median(times)
    return {
        "model": model,
        "family": enc.family,
        "params_M": round(sum(p.numel() for p in enc.model.parameters()) / 1e6, 2),
        "dtype": dtype,
        "clips": clips,
        "clip_seconds": seconds,
        "batch_size": batch,
        "gmacs_per_clip": round(macs_per_clip / 1e9, 4),
        "seconds_median": round(med, 3),
        "seconds_all": [round(t, 3) for t in times],
        "clips_per_second": round(clips / med, 2),
        "achieved_gflops": round(2 * macs_per_clip * clips / med / 1e9, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default:wav2vec2")
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="extract")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    peak32 = matmul_peak(torch.float32)
    # Without native bf16 a 4096³ bf16 product takes minutes: probe with 512³ first.
    peak16 = matmul_peak(torch.bfloat16, n=4096 if cpu_has_fast_bf16() else 512, repeats=3)
    skipped = {}
    rows = []
    for dtype in ("fp32", "bf16"):
        if dtype == "bf16" and peak16 < 0.5 * peak32:
            skipped["bf16"] = (f"not run: this CPU has no native bf16 ({cpu_model()}; bf16 matmul "
                               f"{peak16:.1f} GFLOP/s vs fp32 {peak32:.0f}), so bf16 extraction would be slower than fp32")
            print(skipped["bf16"])
            continue
        row = run(args.model, args.clips, args.seconds, args.batch_size, dtype, args.repeats)
        row["pct_of_fp32_peak"] = round(100 * row["achieved_gflops"] / peak32, 1)
        row["pct_of_own_dtype_peak"] = round(100 * row["achieved_gflops"] / (peak32 if dtype == "fp32" else peak16), 1)
        rows.append(row)
        print(json.dumps(row))
    result = {
        "command": "python benchmarks/extract.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out"
        ),
        "matmul_peak_gflops": {"fp32": round(peak32, 1), "bf16": round(peak16, 1)},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {cpu_model()}",
        "cpu_native_bf16": cpu_has_fast_bf16(),
        "results": rows,
        "skipped": skipped,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"{args.out}.json", result)
    lines = [
        f"# Extraction throughput ({args.model}, {args.seconds:g} s clips, batch {args.batch_size})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']}, {result['threads']} threads, torch {result['torch']}.",
        "",
        f"Measured matmul peak (torch.mm, {result['threads']} threads): fp32 {peak32:.0f} GFLOP/s (4096³), "
        f"bf16 {peak16:.1f} GFLOP/s ({'4096³' if cpu_has_fast_bf16() else '512³'}).",
        "",
        "| dtype | clips/s | s (median of runs) | GMACs/clip | achieved GFLOP/s | % of fp32 peak | % of own-dtype peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dtype']} | {r['clips_per_second']} | {r['seconds_median']} ({', '.join(map(str, r['seconds_all']))}) "
            f"| {r['gmacs_per_clip']} | {r['achieved_gflops']} | {r['pct_of_fp32_peak']} | {r['pct_of_own_dtype_peak']} |"
        )
    lines += [f"- bf16: {why}" for why in skipped.values()]
    write_text_atomic(RESULTS / f"{args.out}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
