"""Cost of the full (L+1) × (L+1) layer-similarity matrices on the 2-core CPU.

Measures, for 13 states of N × 768 float32 features (N = 1 000 / 5 000 / 20 000):

* linear CKA, biased and debiased together (one streaming pass, float64 GEMMs; ``cka``) and the fp32-GEMM
  option (``cka_fp32``, still accumulated in float64);
* mutual kNN alignment, k = 10 (exact blocked kNN once per state + 78 intersections; ``mutual_knn``).

Each (case, N) runs in a fresh subprocess so ``ru_maxrss`` is clean; "peak above data" is the peak RSS minus the
RSS right after the features were created (the data themselves are 13 · N · 768 · 4 bytes = 799 MB at 20 000).
The parent also checks accuracy (streaming CKA vs the N × N Gram reference at N = 1 000; fp32 option vs float64)
and runs block detection on the structured data, whose 13 states form two random-walk blocks (0–4, 5–12).

Usage (writes benchmarks/results/analysis_similarity.{json,md}):

    python benchmarks/analysis_similarity.py
    python benchmarks/analysis_similarity.py --sizes 1000 5000 --cases cka mutual_knn

The machine is shared: the load average before and after each case is recorded next to its timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechprune.analysis.blocks import find_blocks
from speechprune.analysis.similarity import cka_gram, cka_matrices, mutual_knn_matrix
from speechprune.utils.io import write_json_atomic, write_text_atomic
from speechprune.utils.hardware import matmul_peak_gflops

RESULTS = Path(__file__).parent / "results"
CASES = ("cka", "cka_fp32", "mutual_knn")
TARGETS = {"cka_seconds_at_20000": 60.0, "cka_peak_above_data_mb": 2048.0}


def structured_states(n: int, dim: int, n_states: int, seed: int) -> np.ndarray:
    """Two blocks of states, each a random walk (similarity decays inside a block); block 2 starts from a base
    that shares only a little with block 1. Generated in place: no temporaries bigger than one state."""
    rng = np.random.default_rng(seed)
    states = np.empty((n_states, n, dim), dtype=np.float32)
    split = max(1, (5 * n_states) // 13)
    for s in range(n_states):
        rng.standard_normal(out=states[s], dtype=np.float32)
        if s == split:
            states[s] += 0.3 * states[0]
        elif s > 0:
            states[s] *= 0.35
            states[s] += states[s - 1]
    return states


def gemm_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of an n³ product right now: the ceiling (and the load) CKA is measured against."""
    return matmul_peak_gflops(dtype, n, repeats)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(case: str, n: int, dim: int, n_states: int, k: int, repeats: int, save: str | None) -> dict[str, Any]:
    states = structured_states(n, dim, n_states, seed=0)
    rss_data = rss_bytes()
    times, load_before = [], os.getloadavg()[0]
    result: Any = None
    for _ in range(repeats):
        start = time.perf_counter()
        if case == "cka":
            result = cka_matrices(states)
        elif case == "cka_fp32":
            result = cka_matrices(states, precision="float32")
        elif case == "mutual_knn":
            result = {"knn": mutual_knn_matrix(states, k=k)}
        else:
            raise SystemExit(f"unknown case {case}")
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if save:
        np.savez(save, **{str(key): v for key, v in result.items()})
    pair_flops = n_states * (n_states + 1) / 2 * 2 * dim * dim * n  # the cross-product GEMMs of CKA
    return {"case": case, "n": n, "dim": dim, "states": n_states, "k": k if case == "mutual_knn" else None,
            "seconds": min(times), "gflops": pair_flops / min(times) / 1e9 if case.startswith("cka") else None, "all_seconds": times, "data_mb": states.nbytes / 2**20,
            "rss_data_mb": rss_data / 2**20, "peak_above_data_mb": max(0, peak - rss_data) / 2**20,
            "load_before": load_before, "load_after": os.getloadavg()[0], "threads": torch.get_num_threads()}


def run_child(case: str, n: int, args: argparse.Namespace, save: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", case, "--n", str(n), "--dim", str(args.dim),
           "--states", str(args.states), "--k", str(args.k), "--repeats", str(args.repeats), "--save", str(save)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{case:11s} N={n:6d}: {row['seconds']:8.2f} s, peak above data {row['peak_above_data_mb']:7.0f} MB "
          f"(load {row['load_before']:.1f}→{row['load_after']:.1f})", flush=True)
    return row


def accuracy_checks(tmp: Path, sizes: list[int], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    small = min(sizes)
    # The Gram-form reference is O(N^2) per pair: only run it on a small size (it would take hours at 20 000).
    if small <= 5000 and (tmp / f"cka-{small}.npz").exists():
        states = structured_states(small, args.dim, args.states, seed=0)
        got = np.load(tmp / f"cka-{small}.npz")
        for key, deb in (("False", False), ("True", True)):
            ref = np.array([[cka_gram(states[i], states[j], debiased=deb) if i <= j else np.nan
                             for j in range(args.states)] for i in range(args.states)])
            iu = np.triu_indices(args.states)
            name = "debiased" if deb else "biased"
            out[f"max_abs_diff_vs_gram_{name}_n{small}"] = float(np.max(np.abs(got[key][iu] - ref[iu])))
    for n in sizes:
        a, b = tmp / f"cka-{n}.npz", tmp / f"cka_fp32-{n}.npz"
        if a.exists() and b.exists():
            x, y = np.load(a), np.load(b)
            diff = max(np.max(np.abs(x[k] - y[k])) for k in ("False", "True"))
            out[f"max_abs_diff_fp32_vs_fp64_n{n}"] = float(diff)
    return out


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Layer-similarity matrices: cost on the 2-core CPU", "",
        f"Command: `{report['command']}`", "",
        f"{m['cpu']} · torch {m['torch']} · {m['threads']} threads · GEMM peak measured in the same run: "
        f"{m['gemm_gflops_fp32']:.0f} GFLOP/s fp32, {m['gemm_gflops_fp64']:.0f} GFLOP/s fp64 · "
        f"{report['states']} states × N rows × {report['dim']} float32 features (two random-walk blocks)", "",
        "| case | N | wall s | GFLOP/s | peak RSS above data | data | load avg before→after |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"cka": "linear CKA biased + debiased, one pass, float64",
             "cka_fp32": "linear CKA biased + debiased, fp32 GEMM / float64 accumulation",
             "mutual_knn": f"mutual kNN (k = {report['k']}, inner product, L2-normalised)"}
    for r in report["results"]:
        rate = f"{r['gflops']:.0f}" if r.get("gflops") else "–"
        lines.append(f"| {names[r['case']]} | {r['n']:,} | {r['seconds']:.2f} | {rate} | "
                     f"{r['peak_above_data_mb']:.0f} MB | {r['data_mb']:.0f} MB | "
                     f"{r['load_before']:.1f}→{r['load_after']:.1f} |")
    lines += ["", "Targets: CKA < 60 s and < 2 GB peak above the data at N = 20 000.", ""]
    peak = {"cka": m["gemm_gflops_fp64"], "cka_fp32": m["gemm_gflops_fp32"]}
    for r in report["results"]:
        if r["case"] in peak and r["n"] == max(x["n"] for x in report["results"]):
            lines.append(f"- {names[r['case']]}, N = {r['n']:,}: {r['gflops']:.0f} GFLOP/s = "
                         f"{100 * r['gflops'] / peak[r['case']]:.0f} % of the GEMM peak measured at the start of the "
                         "run (CKA is GEMM-bound: its time scales inversely with the machine's free GEMM rate)")
    for key, ok in report["targets_met"].items():
        lines.append(f"- {key}: {'met' if ok else 'NOT met'}")
    lines += ["", "Accuracy:", ""]
    lines += [f"- {k}: {v:.2e}" for k, v in report["accuracy"].items()]
    if report.get("blocks"):
        lines += ["", f"Block detection on the N = {report['blocks']['n']:,} CKA matrix (true blocks: states "
                  f"0–{report['blocks']['true_split'] - 1}, {report['blocks']['true_split']}–{report['states'] - 1}): "
                  f"{report['blocks']['summary']}"]
    lines += ["", "Notes: each case runs in a fresh process; 'peak above data' = ru_maxrss − RSS after the features "
              "were created. The machine is shared with other jobs (see the load averages), so timings are upper "
              "bounds of what an idle 2-core machine gives."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--states", type=int, default=13)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=CASES)
    parser.add_argument("--n", type=int)
    parser.add_argument("--save")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the .md from the existing .json (no measurement)")
    args = parser.parse_args()
    if args.render_only:
        report = json.loads((args.out / "analysis_similarity.json").read_text())
        write_text_atomic(args.out / "analysis_similarity.md", markdown(report))
        return
    if args.child:
        print(json.dumps(child(args.child, args.n, args.dim, args.states, args.k, args.repeats, args.save)))
        return
    command = ("python benchmarks/analysis_similarity.py " + " ".join(sys.argv[1:])).strip()
    peaks = {"gemm_gflops_fp32": gemm_peak(torch.float32), "gemm_gflops_fp64": gemm_peak(torch.float64)}
    print(f"GEMM peak now: {peaks['gemm_gflops_fp32']:.0f} GFLOP/s fp32, {peaks['gemm_gflops_fp64']:.0f} fp64",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for n in sorted(args.sizes):
            for case in args.cases:
                rows.append(run_child(case, n, args, tmp / f"{case}-{n}.npz"))
        accuracy = accuracy_checks(tmp, sorted(args.sizes), args)
        blocks = None
        big = max(args.sizes)
        if (tmp / f"cka-{big}.npz").exists():
            res = find_blocks(np.load(tmp / f"cka-{big}.npz")["False"])
            blocks = {"n": big, "true_split": max(1, (5 * args.states) // 13), "blocks": res.blocks,
                      "has_blocks": res.has_blocks, "summary": res.summary()}
    cka20 = [r for r in rows if r["case"] == "cka" and r["n"] == 20000]
    targets = {}
    if cka20:
        targets = {"CKA wall < 60 s at N = 20 000": cka20[0]["seconds"] < TARGETS["cka_seconds_at_20000"],
                   "CKA peak < 2 GB above data at N = 20 000":
                       cka20[0]["peak_above_data_mb"] < TARGETS["cka_peak_above_data_mb"]}
    report = {"command": command, "states": args.states, "dim": args.dim, "k": args.k, "results": rows,
              "accuracy": accuracy, "blocks": blocks, "targets_met": targets,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": np.__version__,
                          "python": platform.python_version(), **peaks},
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json_atomic(args.out / "analysis_similarity.json", report)
    write_text_atomic(args.out / "analysis_similarity.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
