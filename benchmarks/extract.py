"""Extraction throughput against the machine's measured matmul peak.

Reports clips/s and achieved GFLOP/s (2 × analytic MACs × clips/s) of ``extract_features`` — the real code path:
input preparation, one forward pass with all states hooked, padding-aware pooling, shard writes and
consolidation — for a base-sized model on 1 s clips, batch 8, in fp32 and bf16, against the peak GEMM rate
measured in the same process (torch.mm 4096³).

Usage (writes benchmarks/results/extract.{json,md}):

    python benchmarks/extract.py --clips 96 --repeats 3
    python benchmarks/extract.py --model default:hubert --clips 48

Timing depends only on shapes, so randomly initialised base configs stand in for the real checkpoints.

``--overhead`` measures instead what extraction costs on top of the model (issue 18, writes
benchmarks/results/extract_overhead.{json,md}):

1. in this process, rounds interleaved: the bare transformers forward (``model(x, output_hidden_states=True)`` on a
   ready batch) against ``extract_features`` on the same number of batches of in-memory clips (decoding, input
   preparation, hooks, pooling, shard writes, consolidation), at 1 s × 8 and 4 s × 8 — the allocator settings of
   the CLI are applied first, as ``speechprune`` does at start-up;
2. the default launch against today's code: ``python -m speechprune.cli.app extract`` on WAV folders, alternating
   this checkout with an older one (``--old-src``, e.g. a ``git worktree`` of main before the change), each in a
   fresh process; throughput from each run's ``run.json`` (the extraction loop, not imports and model building).

    python benchmarks/extract.py --overhead --old-src /tmp/old/src --rounds 3
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


def _batches_of_noise(n: int, seconds: float, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy((0.1 * rng.standard_normal((8, int(seconds * 16000)))).astype(np.float32))
            for _ in range(n)]


def overhead_in_process(model: str, shapes: list[tuple[float, int]], batches: int, rounds: int) -> list[dict]:
    """Bare transformers forward vs extract_features, interleaved round by round in this process."""
    import os

    enc = load_encoder(model)
    bare_model = enc.model
    rows = []
    for seconds, batch in shapes:
        xs = [x[:batch] for x in _batches_of_noise(batches, seconds, 0)]

        def bare() -> None:
            for x in xs:
                with torch.inference_mode():
                    bare_model(x, output_hidden_states=True)

        def extract(r: int) -> tuple[float, float]:
            """(batch loop seconds as run.json records them, whole call): the call adds the once-per-extraction
            work (hashing the weights for the cache key, consolidation)."""
            ds = noise_dataset(batch * batches, seconds, seed=100 + r)
            with tempfile.TemporaryDirectory() as cache:
                t = time.perf_counter()
                feats = extract_features(enc, ds, batch_size=batch, cache_dir=cache, progress=False)
                whole = time.perf_counter() - t
                return json.loads((feats.path / "run.json").read_text())["seconds"], whole

        bare(), extract(-1)  # warm-up
        t_bare, t_ext, fixed, loads = [], [], [], []
        for r in range(rounds):
            loads.append(os.getloadavg()[0])
            for name in (("bare", "extract") if r % 2 == 0 else ("extract", "bare")):
                if name == "bare":
                    t = time.perf_counter()
                    bare()
                    t_bare.append((time.perf_counter() - t) / batches)
                else:
                    loop, whole = extract(r)
                    t_ext.append(loop / batches)
                    fixed.append(whole - loop)
        ratios = [b / e for b, e in zip(t_bare, t_ext)]
        row = {"clip_seconds": seconds, "batch_size": batch, "batches_per_round": batches,
               "bare_s_per_batch": [round(t, 3) for t in t_bare], "extract_s_per_batch": [round(t, 3) for t in t_ext],
               "per_extraction_fixed_s": [round(x, 3) for x in fixed],
               "ratio_per_round": [round(x, 3) for x in ratios], "ratio_median": round(statistics.median(ratios), 3),
               "load_1min": [round(x, 2) for x in loads]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def overhead_cli(model: str, shapes: list[tuple[float, int]], batches: int, rounds: int, old_src: str,
                 new_src: str | None = None) -> list[dict]:
    """`speechprune extract` (default launch) of this checkout against an older one, alternating fresh processes."""
    import os
    import subprocess
    import sys

    import soundfile as sf

    new_src = new_src or str(Path(__file__).resolve().parents[1] / "src")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seconds, batch in shapes:
            data = Path(work) / f"data-{seconds:g}s"
            (data / "wav").mkdir(parents=True)
            rng = np.random.default_rng(1)
            lines = ["file_name,y"]
            for i in range(batch * batches):
                sf.write(data / "wav" / f"c{i}.wav", (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32),
                         16000, subtype="FLOAT")
                lines.append(f"wav/c{i}.wav,{i % 2}")
            (data / "metadata.csv").write_text("\n".join(lines) + "\n")
            runs: dict[str, list[float]] = {"old": [], "new": []}
            loads = []
            for r in range(rounds):
                for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    cache = Path(work) / f"cache-{name}-{seconds:g}-{r}"
                    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "SPEECHPRUNE_MALLOC")}
                    env["PYTHONPATH"] = old_src if name == "old" else new_src
                    loads.append(os.getloadavg()[0])
                    subprocess.run([sys.executable, "-m", "speechprune.cli.app", "extract", model, str(data), "-l", "y",
                                    "--batch-size", str(batch), "--cache-dir", str(cache), "--no-progress"],
                                   env=env, check=True, capture_output=True, text=True)
                    (run,) = cache.glob("*/run.json")
                    runs[name].append(json.loads(run.read_text())["seconds"] / batches)
            speedups = [o / n for o, n in zip(runs["old"], runs["new"])]
            row = {"clip_seconds": seconds, "batch_size": batch, "batches_per_run": batches,
                   "old_s_per_batch": [round(t, 3) for t in runs["old"]],
                   "new_s_per_batch": [round(t, 3) for t in runs["new"]],
                   "speedup_per_round": [round(x, 3) for x in speedups],
                   "speedup_median": round(statistics.median(speedups), 3), "load_1min": [round(x, 2) for x in loads]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main_overhead(args: argparse.Namespace) -> None:
    import os

    from speechprune.utils.malloc import tune_allocator

    shapes = [(float(a), int(b)) for a, b in (s.split("x") for s in args.shapes.split(","))]
    tuned = tune_allocator()  # what `speechprune` does at start-up
    load_start = os.getloadavg()
    parts = args.parts.split(",")
    same = overhead_in_process(args.model, shapes, args.batches, args.rounds) if "inproc" in parts else []
    cli = (overhead_cli(args.model, shapes, args.batches, args.rounds, args.old_src, args.new_src)
           if args.old_src and "cli" in parts else [])
    result = {
        "command": "python benchmarks/extract.py --overhead " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if v is not None and k in ("model", "shapes", "batches", "rounds", "old_src", "new_src", "parts", "threads",
                                       "out")),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": f"{platform.machine()} {cpu_model()}",
        "allocator_tuned": tuned, "load_at_start": [round(x, 2) for x in load_start],
        "load_at_end": [round(x, 2) for x in os.getloadavg()], "in_process": same, "default_launch": cli,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"{args.out}.json", result)
    lines = [
        f"# Extraction overhead ({args.model}, random weights, fp32)", "",
        f"Command: `{result['command']}`", "",
        f"Machine: {result['machine']}, {result['threads']} threads, torch {result['torch']}; shared machine, "
        f"1-min load {result['load_at_start'][0]} at start, {result['load_at_end'][0]} at end (per round below): "
        "absolute times are inflated by other jobs, ratios are measured interleaved.", "",
        "## Same process: speechprune extraction vs the bare transformers forward (throughput ratio, ≥ 0.95 wanted)", "",
        "Extraction time is the batch loop as `run.json` records it (decoding, preparation, forward with hooks, "
        "pooling, shard writes); the once-per-extraction work (hashing the weights for the cache key, "
        "consolidation) is listed apart.", "",
        "| clips | bare s/batch | extract s/batch | ratio per round | median ratio | fixed s per extraction | load per round |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in same:
        lines.append(f"| {r['clip_seconds']:g} s × {r['batch_size']} | {r['bare_s_per_batch']} | "
                     f"{r['extract_s_per_batch']} | {r['ratio_per_round']} | **{r['ratio_median']}** | "
                     f"{r['per_extraction_fixed_s']} | {r['load_1min']} |")
    if cli:
        lines += ["", "## Default launch (`speechprune extract`): this checkout vs today's code (speed-up, ≥ 1.2 wanted)",
                  "", "| clips | old s/batch | new s/batch | speed-up per round | median | load per run |",
                  "|---|---|---|---|---|---|"]
        for r in cli:
            lines.append(f"| {r['clip_seconds']:g} s × {r['batch_size']} | {r['old_s_per_batch']} | "
                         f"{r['new_s_per_batch']} | {r['speedup_per_round']} | **{r['speedup_median']}** | "
                         f"{r['load_1min']} |")
    write_text_atomic(RESULTS / f"{args.out}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default:wav2vec2")
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--overhead", action="store_true", help="extraction vs bare forward, and vs --old-src")
    ap.add_argument("--old-src", default=None, help="src folder of an older checkout (for --overhead)")
    ap.add_argument("--shapes", default="1x8,4x8", help="SECONDSxBATCH list (for --overhead)")
    ap.add_argument("--batches", type=int, default=2, help="batches per timed run (for --overhead)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (for --overhead)")
    ap.add_argument("--parts", default="inproc,cli", help="which --overhead parts to run: inproc, cli")
    ap.add_argument("--new-src", default=None, help="src folder for the new side of the cli part (default: this one)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.overhead:
        args.out = args.out or "extract_overhead"
        main_overhead(args)
        return
    args.out = args.out or "extract"

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
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if v is not None and k in ("model", "clips", "seconds", "batch_size", "repeats", "threads")
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
