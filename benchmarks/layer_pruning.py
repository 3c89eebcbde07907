"""The layer-pruning seed experiment on the real model (issue 4): Whisper base, FSDD words/speakers, EmoDB emotion.

For each task:

1. the **pretrained** model's graph convexity per state for the task's label (k = 10, ≤ 5000 pairs per class,
   seed 42; mean over valid frames; same encoder window as the fine-tuning), and the depth it picks
   (argmax; and the shallowest layer within 1 point);
2. for every depth k = 1..6, fine-tune the model truncated to k layers (same recipe for all depths) and record
   test accuracy, macro-F1, training time, MACs and measured latency;
3. the correlation (Pearson, Spearman) between convexity at state k and the fine-tuned accuracy at depth k;
4. from the fine-tuned full model, the retained-capacity curves of layer removal **without retraining** for
   every order (backward, forward, block-influence, kNN block-influence), influence measured on training clips.

Everything is written as it goes to ``benchmarks/results/layer_pruning_whisper-base/<task>/`` and a finished
depth is not redone when the script is re-run (fine-tuned models are kept in ``~/.cache/speechprune/experiments``).

CPU budget: Whisper's 30 s window would make each training step ~15× dearer than the clips need, so the encoder
runs a short window (FSDD 1 s, EmoDB 2 s — EmoDB clips here are 2 s long); the drift this causes is measured and
recorded beside the results (frame cosine of each state against the 30 s window).

    python benchmarks/layer_pruning.py                    # all tasks
    python benchmarks/layer_pruning.py fsdd-word          # one task
    python benchmarks/layer_pruning.py --quick            # wiring check on a tiny random Whisper (seconds)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from speechprune.analysis.convexity import convexity_by_layer
from speechprune.compress.layers import (ORDERS, block_influence, choose_depth, plot_removal_curves, removal_curve,
                                         removal_order)
from speechprune.data.sources import load_audiofolder
from speechprune.data.splits import SplitSpec, make_splits
from speechprune.features.extract import extract_features
from speechprune.models import load_encoder
from speechprune.train.evaluate import model_cost
from speechprune.train.finetune import finetune
from speechprune.train.loop import TrainConfig
from speechprune.utils.io import write_json_atomic, write_text_atomic

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results" / "layer_pruning_whisper-base"
WORK = Path(os.environ.get("SPEECHPRUNE_CACHE", Path.home() / ".cache" / "speechprune")) / "experiments" / "layer_pruning"

TASKS: dict[str, dict[str, Any]] = {
    "fsdd-word": dict(data="fsdd", label="word", window=1.0, takes=10, split=SplitSpec(split_column="split")),
    "emodb-emotion": dict(data="emodb", label="emotion", window=2.0, split=SplitSpec(test_groups=["14", "15", "16"])),
    "fsdd-speaker": dict(data="fsdd", label="speaker", window=1.0, takes=10, split=SplitSpec(split_column="split")),
}
TRAIN = TrainConfig(epochs=4, batch_size=8, lr=5e-5, head_lr=1e-3, warmup_ratio=0.1, freeze_front_end=True, seed=0)


def load_task_data(task: dict[str, Any]) -> Any:
    if task["data"] == "fsdd":
        ds = load_audiofolder(SHARED / "fsdd", label_columns=["word", "speaker", "split", "take"], group_column="speaker")
        keep = [i for i, it in enumerate(ds.items) if int(it.labels["take"]) < task["takes"]]
        return ds.subset(keep, name=f"fsdd-takes0-{task['takes'] - 1}")
    return load_audiofolder(SHARED / "emodb", label_columns=["emotion", "speaker"], group_column="speaker")


def run_task(name: str, task: dict[str, Any], model: str, quick: bool) -> None:
    out = RESULTS / name if not quick else Path("/tmp/speechprune-layer-pruning-quick") / name
    work = WORK / name if not quick else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    ds = load_task_data(task)
    if quick:
        pick = np.random.default_rng(0).choice(len(ds), size=min(80, len(ds)), replace=False)
        ds = ds.subset(sorted(pick.tolist()), name=ds.name + "-quick")
    label, window = task["label"], task["window"]
    base = load_encoder(model, window_seconds=window)
    parts = make_splits(ds, label, task["split"])
    write_json_atomic(out / "setup.json", {
        "model": model, "data": ds.name, "n": len(ds), "label": label, "window_s": window,
        "splits": {k: len(v) for k, v in parts.items()}, "split_spec": task["split"].to_dict(),
        "train_config": TRAIN.to_dict(), "threads": os.cpu_count()})
    drift = _drift(model, ds, window, out, quick)
    conv = _convexity(base, ds, label, out)
    depth = {"argmax": choose_depth(conv["scores"]).to_dict(), "within_1pt": choose_depth(conv["scores"], 1.0).to_dict()}
    rows = _depths(base, ds, label, task, work, out, quick)
    _correlation(conv, rows, depth, drift, out)
    _removal(work, ds, label, parts, out, window)


def _drift(model: str, ds: Any, window: float, out: Path, quick: bool) -> dict[str, Any]:
    path = out / "window_drift.json"
    if path.exists():
        return json.loads(path.read_text())
    from speechprune.features.drift import window_drift

    full = load_encoder(model)
    clips = [ds.load_audio(i) for i in range(0, len(ds), max(1, len(ds) // (8 if quick else 32)))]
    clips = [c for c in clips if len(c) <= window * 16_000][:16]
    res = {"window_s": window, "clips": len(clips), "states": window_drift(full, clips, window)}
    write_json_atomic(path, res)
    return res


def _convexity(base: Any, ds: Any, label: str, out: Path) -> dict[str, Any]:
    path = out / "convexity_pretrained.json"
    if path.exists():
        return json.loads(path.read_text())
    feats = extract_features(base, ds, pooling="mean", batch_size=8, progress=False)
    rows = convexity_by_layer(feats, label)
    scores = {int(r["state"]): float(r["score"]) for r in rows}
    data = {"label": label, "scores": scores, "rows": rows}
    write_json_atomic(path, data)
    return {"label": label, "scores": scores, "rows": rows}


def _depths(base: Any, ds: Any, label: str, task: dict[str, Any], work: Path, out: Path, quick: bool) -> list[dict]:
    path = out / "depths.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []
    done = {r["depth"] for r in rows}
    cfg = TrainConfig(**{**TRAIN.to_dict(), "epochs": 2 if quick else TRAIN.epochs})
    for k in range(1, base.num_layers + 1):
        if k in done:
            continue
        enc = base.keep_layers(k) if k < base.num_layers else base
        model_dir = work / f"depth{k}"
        resume = (model_dir.parent / f".{model_dir.name}.training").exists()
        t0 = time.perf_counter()
        res = finetune(enc, ds, label, model_dir, cfg, task["split"], resume=resume, overwrite=not resume,
                       progress=False, latency_repeats=5 if quick else 20)
        test = res["test"]
        rows.append({
            "depth": k, "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
            "best_val_accuracy": res["training"]["best_validation_accuracy"], "best_epoch": res["training"]["best_epoch"],
            "train_seconds": res["training"]["train_seconds"], "wall_seconds": time.perf_counter() - t0,
            "params": test["cost"]["params_total"], "macs_per_clip": test["cost"]["macs_per_clip"],
            "latency_ms": test["cost"]["latency_ms_median"], "load_avg": os.getloadavg()[0],
        })
        rows.sort(key=lambda r: r["depth"])
        write_json_atomic(path, rows)
        print(f"{out.name}: depth {k}: acc {test['accuracy']:.3f}, {res['training']['train_seconds']:.0f} s", flush=True)
    return rows


def _correlation(conv: dict[str, Any], rows: list[dict], depth: dict[str, Any], drift: dict, out: Path) -> None:
    from scipy.stats import pearsonr, spearmanr

    lat_path = out / "latency.json"  # interleaved, single-thread re-measurement (layer_pruning_latency.py)
    if lat_path.exists():
        lat = json.loads(lat_path.read_text())["median_ms"]
        rows = [{**r, "latency_ms_during_training_run": r["latency_ms"], "latency_ms": lat[str(r["depth"])]}
                for r in rows]
    ks = [r["depth"] for r in rows]
    c = np.array([conv["scores"][k] if k in conv["scores"] else conv["scores"][str(k)] for k in ks])
    a = np.array([r["test_accuracy"] for r in rows])
    full = rows[-1]
    chosen = {name: next(r for r in rows if r["depth"] == d["depth"]) for name, d in depth.items()}
    summary = {
        "convexity_by_state": conv["scores"], "depth_choice": depth,
        "pearson_convexity_vs_accuracy": float(pearsonr(c, a)[0]) if len(ks) > 2 and np.std(a) > 0 else None,
        "spearman_convexity_vs_accuracy": float(spearmanr(c, a)[0]) if len(ks) > 2 and np.std(a) > 0 else None,
        "full": full,
        "chosen": {name: {**r, "accuracy_vs_full": r["test_accuracy"] / full["test_accuracy"],
                          "macs_vs_full": r["macs_per_clip"] / full["macs_per_clip"],
                          "latency_vs_full": r["latency_ms"] / full["latency_ms"],
                          "train_time_vs_full": r["train_seconds"] / full["train_seconds"]}
                   for name, r in chosen.items()},
        "goal": "≥ 99 % of full accuracy at ≤ 60 % of the encoder's MACs",
    }
    for name, r in summary["chosen"].items():
        r["goal_met"] = bool(r["accuracy_vs_full"] >= 0.99 and r["macs_vs_full"] <= 0.60)
    write_json_atomic(out / "summary.json", summary)
    lines = ["| depth | convexity (pretrained) | test acc | macro-F1 | train s | GMACs/clip | latency ms (1 thread) | params M |",
             "|---|---|---|---|---|---|---|---|"]
    for r, ci in zip(rows, c):
        lines.append(f"| {r['depth']} | {ci:.1f} | {r['test_accuracy']:.3f} | {r['test_macro_f1']:.3f} | "
                     f"{r['train_seconds']:.0f} | {r['macs_per_clip'] / 1e9:.3f} | {r['latency_ms']:.1f} | "
                     f"{r['params'] / 1e6:.2f} |")
    write_text_atomic(out / "depths.md", "\n".join(lines) + "\n")
    _plot_depths(rows, c, depth, out / "depths.png")


def _plot_depths(rows: list[dict], conv: np.ndarray, depth: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["depth"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [100 * r["test_accuracy"] for r in rows], marker="o", label="fine-tuned test accuracy (%)")
    ax.plot(ks, conv, marker="s", label="pretrained convexity (%)")
    ax.axvline(depth["argmax"]["depth"], color="grey", ls="--", lw=0.8, label="convexity's pick")
    ax.set_xlabel("layers kept (k)")
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _removal(work: Path, ds: Any, label: str, parts: dict[str, np.ndarray], out: Path, window: float) -> None:
    path = out / "removal.csv"
    if path.exists():
        return
    full_dir = max(work.glob("depth*"), key=lambda p: int(p.name[5:]))
    enc = load_encoder(str(full_dir))
    rng = np.random.default_rng(0)
    probe = np.sort(rng.choice(parts["train"], size=min(200, len(parts["train"])), replace=False))
    influence = block_influence(enc, ds, probe)
    write_json_atomic(out / "influence.json", {k: {str(i): v for i, v in d.items()} for k, d in influence.items()})
    rows = []
    for order in ORDERS:
        seq = removal_order(order, enc.num_layers, influence.get(order))
        rows += removal_curve(enc, ds, label, seq, parts["test"], order_name=order, profile_seconds=window)
    with open(path.with_suffix(".tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(path.with_suffix(".tmp"), path)
    plot_removal_curves(rows, out / "removal.png", title=f"{out.name}: removal without retraining")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", nargs="*", help=f"any of {', '.join(TASKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny random Whisper, ~60 clips: checks the wiring")
    args = parser.parse_args()
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    if args.quick:
        model = "tiny:whisper"
    else:
        from speechprune.cli.cmd_demo import ensure_whisper

        model = str(ensure_whisper("base"))
    for name in args.tasks or list(TASKS):
        run_task(name, TASKS[name], model, args.quick)


if __name__ == "__main__":
    main()
