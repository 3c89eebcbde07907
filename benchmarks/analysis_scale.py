"""Scale test of the layer analysis: the full ``analyze`` computation on 100 000 cached rows × 13 states × 768 dims.

What ``speechprune analyze`` runs after extraction, with its defaults (``analysis/runner.py``): the similarity
matrices (cosine, linear CKA, mutual kNN on a 20 000-row subset) each with 3 shuffled-pairing permutations, graph
convexity for two label columns with 3 label permutations (on a 20 000-row subset, ``--convexity-max-rows``; 1 000
pairs per class for each permutation, ``--chance-pairs``), and
linear probes (5 folds, 3 permutations; above 20 000 rows the closed-form ridge probe, ``--probe``) for both
labels. Features are synthetic (extraction is not measured here; see ``benchmarks/extract.py``): two labels,
``word`` (10 classes) and ``speaker`` (20 classes), placed on a 6-d latent that each state mixes differently, plus
isotropic noise, in float32 — 4 GB for 100 000 × 13 × 768.

Every phase is timed (wall and CPU seconds) and its peak RSS recorded by a sampling thread (every 50 ms), and the
results are written after each phase, so a run that is stopped still leaves what it measured:

    python benchmarks/analysis_scale.py                          # 100 000 rows, all phases
    python benchmarks/analysis_scale.py --rows 5000 --no-write   # a quick check
    python benchmarks/analysis_scale.py --phases similarity convexity --device cuda

Results: ``benchmarks/results/analysis_scale.{json,md}``. The machine is shared: the load average is recorded
before and after every phase.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
PHASES = ("similarity", "convexity", "probes")


def make_features(n: int, n_states: int, dim: int, seed: int = 0) -> Any:
    """Synthetic cached features with class structure (in place, no temporaries larger than one state)."""
    from speechprune.features import LayerFeatures

    rng = np.random.default_rng(seed)
    word = rng.integers(0, 10, n)
    speaker = rng.integers(0, 20, n)
    latent = 6
    wc = rng.standard_normal((10, latent)) * 1.5
    sc = rng.standard_normal((20, latent)) * 1.5
    z_noise = rng.standard_normal((n, latent)).astype(np.float32)
    states = np.empty((n_states, n, dim), dtype=np.float32)
    for s in range(n_states):
        t = s / max(1, n_states - 1)  # early states carry the speaker, late states the word
        z = (t * wc[word] + (1 - t) * sc[speaker]).astype(np.float32) + z_noise
        embed = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
        rng.standard_normal(out=states[s], dtype=np.float32)
        states[s] *= 0.3
        states[s] += z @ embed
    return LayerFeatures(states=states, layers=list(range(n_states)), item_index=np.arange(n),
                         labels={"word": [f"w{v}" for v in word], "speaker": [f"s{v}" for v in speaker]},
                         groups=[f"s{v}" for v in speaker], pooling="mean")


class PeakRSS:
    """Samples this process's RSS every ``interval`` seconds; ``peak()`` since the last ``reset()``."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self._peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.rss())
            time.sleep(self.interval)

    def reset(self) -> None:
        self._peak = self.rss()

    def peak(self) -> int:
        return max(self._peak, self.rss())

    def stop(self) -> None:
        self._stop.set()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def timed(name: str, fn: Any, rss: PeakRSS, rows: list[dict[str, Any]], save: Any) -> Any:
    rss.reset()
    load, cpu, start = os.getloadavg()[0], _cpu(), time.perf_counter()
    out = fn()
    row = {"kernel": name, "wall_s": time.perf_counter() - start, "cpu_s": _cpu() - cpu,
           "peak_rss_gb": rss.peak() / 2**30, "load_before": load, "load_after": os.getloadavg()[0]}
    rows.append(row)
    print(json.dumps(row), flush=True)
    save()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--states", type=int, default=13)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    ap.add_argument("--permutations", type=int, default=3)
    ap.add_argument("--device", default=None, help="torch device for the similarity and kNN kernels")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--convexity-max-rows", type=int, default=20_000,
                    help="convexity on a seeded subset of at most this many rows, as `speechprune analyze` (0 = all)")
    ap.add_argument("--chance-pairs", type=int, default=1000,
                    help="pairs per class of each convexity permutation baseline, as `speechprune analyze` (0 = 5000)")
    ap.add_argument("--probe", default="auto", choices=("auto", "logistic", "ridge"),
                    help="linear probe (auto: ridge above 20,000 rows, as `speechprune analyze`)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--results-dir", type=Path, default=RESULTS, help="where NAME.json and NAME.md are written")
    ap.add_argument("--name", default="analysis_scale", help="results file stem (e.g. analysis_scale_gpu)")
    args = ap.parse_args()

    from speechprune.analysis.convexity import convexity_by_labels
    from speechprune.analysis.knn import subset_rows
    from speechprune.analysis.probes import probes_by_layer
    from speechprune.analysis.similarity import (
        _knn_pairs_matrix,
        _lists,
        cka_matrices,
        cosine_matrix,
        shuffled_pairing_baseline,
    )
    from speechprune.data.splits import cv_folds

    command = "python benchmarks/analysis_scale.py " + " ".join(sys.argv[1:])
    rss = PeakRSS()
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "command": command.strip(), "rows": args.rows, "states": args.states, "dim": args.dim,
        "device": args.device or "cpu", "permutations": args.permutations, "probe": args.probe,
        "convexity_max_rows": args.convexity_max_rows, "chance_pairs": args.chance_pairs,
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "mem_total_gb": os.sysconf("SC_PHYS_PAGES")
                    * os.sysconf("SC_PAGE_SIZE") / 2**30},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "kernels": rows,
    }

    def save() -> None:
        report["total_wall_s"] = sum(r["wall_s"] for r in rows)
        report["peak_rss_gb"] = max([r["peak_rss_gb"] for r in rows] + [report.get("data_rss_gb", 0.0)])
        if not args.no_write:
            args.results_dir.mkdir(parents=True, exist_ok=True)
            (args.results_dir / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
            (args.results_dir / f"{args.name}.md").write_text(markdown(report))

    feats = timed("make synthetic features", lambda: make_features(args.rows, args.states, args.dim), rss, rows,
                  save)
    report["data_gb"] = feats.states.nbytes / 2**30
    report["data_rss_gb"] = PeakRSS.rss() / 2**30
    xs = [feats.states[s] for s in range(args.states)]
    labels = list(feats.layers)
    perms, seed, dev = args.permutations, 42, args.device
    if "similarity" in args.phases:
        timed("cosine", lambda: cosine_matrix(xs, labels=labels), rss, rows, save)
        timed("linear CKA, biased + debiased", lambda: cka_matrices(xs, labels=labels, device=dev), rss, rows, save)
        sub_rows = subset_rows(args.rows, 20000, seed)  # the rows similarity_matrices' knn_max_rows=20000 takes
        sub = xs if sub_rows is None else [x[sub_rows] for x in xs]
        def knn_matrix() -> Any:
            """As similarity_matrices does: one neighbour search per state, shared by the matrix and its baseline."""
            found = _lists(sub, 10, "ip", True, labels, dev, exact_order=False)
            _knn_pairs_matrix(found)
            return found

        lists = timed(f"mutual kNN (k = 10, {len(sub[0]):,} rows)", knn_matrix, rss, rows, save)
        if perms:
            timed(f"cosine baseline ({perms} permutations)",
                  lambda: shuffled_pairing_baseline(xs, "cosine", perms, seed, labels=labels), rss, rows, save)
            timed(f"CKA baseline ({perms} permutations)",
                  lambda: shuffled_pairing_baseline(xs, "cka", perms, seed, labels=labels, precision="float32",
                                                    device=dev), rss, rows, save)
            timed(f"mutual kNN baseline ({perms} permutations)",
                  lambda: shuffled_pairing_baseline(sub, "mutual_knn", perms, seed, k=10, labels=labels, device=dev,
                                                    lists=lists),
                  rss, rows, save)
    if "convexity" in args.phases:
        cap = f", {min(args.rows, args.convexity_max_rows):,} rows" if args.convexity_max_rows else ""
        out = timed(f"graph convexity, word + speaker, {perms} permutations each{cap}",
                    lambda: convexity_by_labels(feats, ["word", "speaker"], n_permutations=perms, seed=seed,
                                                processes=args.processes, device=dev,
                                                max_rows=args.convexity_max_rows or None,
                                                chance_pairs_per_class=args.chance_pairs or None), rss, rows, save)
        report["convexity"] = {lab: [{"state": r["state"], "score": r["score"], "chance": r.get("chance"),
                                      "seconds": r["seconds"]} for r in rs] for lab, rs in out.items()}
        save()
    if "probes" in args.phases:
        for label in ("word", "speaker"):
            y = feats.labels[label]
            # speaker = group column: stratified folds, as the runner does; word: speaker-independent folds
            groups = None if label == "speaker" else feats.groups
            splits = cv_folds(y, groups=groups, n_splits=5, seed=seed)
            timed(f"probes {label} ({args.probe} probe, 5 folds, {perms} permutations)",
                  lambda y=y, splits=splits, label=label: probes_by_layer(feats, label, splits=splits, seed=seed,
                                                                         n_permutations=perms, probe=args.probe,
                                                                         device=dev), rss, rows, save)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    rss.stop()
    save()
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Full analysis at {report['rows']:,} rows × {report['states']} states × {report['dim']} dims",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Device: {report['device']}. Machine: {report['machine']}. Started {report['started']}"
        + (f", finished {report['finished']}." if "finished" in report else " — **not finished** (partial)."),
        f"Data: {report.get('data_gb', 0):.2f} GB of float32 features; RSS with the data loaded "
        f"{report.get('data_rss_gb', 0):.2f} GB.",
        "",
        "| kernel | wall s | CPU s | peak RSS GB | load before → after |",
        "|---|---|---|---|---|",
    ]
    for r in report["kernels"]:
        lines.append(f"| {r['kernel']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_gb']:.2f} | "
                     f"{r['load_before']:.1f} → {r['load_after']:.1f} |")
    lines += ["", f"Total wall {report.get('total_wall_s', 0) / 60:.1f} min; peak RSS "
              f"{report.get('peak_rss_gb', 0):.2f} GB. Targets: < 60 min and < 8 GB on the 2-core CPU; < 5 min on a GPU.", "",
              "The 2 cores are shared with other users' jobs (see the load averages: a load of L on 2 cores leaves "
              "this run about 2/L of the machine), so wall times are upper bounds; CPU s is what the run consumed."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
