"""Structured pruning (HJ-Pruning, issue 6) of the fine-tuned Whisper base classifiers of the layer-pruning
experiment: FSDD words and EmoDB emotion, same data and splits (``benchmarks/layer_pruning.py``: ``TASKS``,
``load_task_data``), teachers ``~/.cache/speechprune/experiments/layer_pruning/<task>/depth6``.

Runs, in priority order (the CPU budget decides how far it gets; each finished run is kept and skipped on re-run,
an interrupted one is resumed from its last epoch):

1. FSDD words at 50 % MACs in the three budget modes: total MACs, total size, separate front-end/transformer MACs;
2. FSDD words at 70 % and 30 % total MACs;
3. transformer-only pruning (no conv gates) at 50 % MACs;
4. EmoDB emotion at 50 % MACs;
5. then the Size and SepMAC modes at 70 % / 30 % on FSDD, and Size, SepMAC, transformer-only on EmoDB;
6. EmoDB at 70 % / 30 % in every mode, transformer-only at 70 % / 30 % on both tasks;
7. 2 epochs of fine-tuning after pruning at FSDD MAC 50 %, EmoDB MAC 30 % and FSDD SepMAC 30 %;
8. a faster Lagrangian (less saturated initial gates, higher gate/λ lr, shorter ramp) at FSDD 50 % / EmoDB 30 % MACs;
9. both follow-ups on EmoDB at 50 % MACs.

For each: test accuracy/macro-F1, params and MACs (analytic cost of the eval masks and the profiler's count of the
pruned model), budget error before and after calibration, and latency measured back to back with the unpruned
teacher in this process (fixed threads, median of interleaved repeats, load average recorded). Comparisons: the
teacher's metrics.json and layer truncation (``layer_pruning_whisper-base/<task>/depths.json``) at similar MACs.

    python benchmarks/structured_pruning.py              # everything, in order
    python benchmarks/structured_pruning.py --only fsdd-word-macs0.5
    python benchmarks/structured_pruning.py --quick      # wiring check on a tiny random Whisper (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from layer_pruning import TASKS, load_task_data  # noqa: E402

from speechprune.compress.structured.train import PruneOptions, prune_structured  # noqa: E402
from speechprune.models import load_encoder  # noqa: E402
from speechprune.train.finetune import work_dir_for  # noqa: E402
from speechprune.train.loop import TrainConfig  # noqa: E402
from speechprune.utils.io import write_json_atomic  # noqa: E402

ROOT = Path(os.environ.get("SPEECHPRUNE_CACHE", Path.home() / ".cache" / "speechprune")) / "experiments"
TEACHERS = ROOT / "layer_pruning"
WORK = ROOT / "structured_pruning"
RESULTS = Path(__file__).parent / "results" / "structured_whisper-base"
LAYER_RESULTS = Path(__file__).parent / "results" / "layer_pruning_whisper-base"

# Same recipe as the teachers' fine-tuning (lr 5e-5, head 1e-3, batch 8, front end weights frozen — its conv gates
# still learn), 3 epochs, target ramped over the first half of the updates.
TRAIN = TrainConfig(epochs=3, batch_size=8, lr=5e-5, head_lr=1e-3, warmup_ratio=0.1, freeze_front_end=True, seed=0)
OPTIONS = PruneOptions(target_warmup=0.5, gate_lr=0.2, reg_lr=0.2, calibrate=True, finetune_epochs=0)

RUNS: list[dict[str, Any]] = [
    {"name": "fsdd-word-macs0.5", "task": "fsdd-word", "budget": "macs=0.5", "mode": "MAC"},
    {"name": "fsdd-word-size0.5", "task": "fsdd-word", "budget": "size=0.5", "mode": "Size"},
    {"name": "fsdd-word-sepmacs0.5", "task": "fsdd-word", "budget": "frontend-macs=0.5,transformer-macs=0.5",
     "mode": "SepMAC"},
    {"name": "fsdd-word-macs0.7", "task": "fsdd-word", "budget": "macs=0.7", "mode": "MAC"},
    {"name": "fsdd-word-macs0.3", "task": "fsdd-word", "budget": "macs=0.3", "mode": "MAC"},
    {"name": "fsdd-word-transformer-only-macs0.5", "task": "fsdd-word", "budget": "macs=0.5",
     "mode": "MAC, transformer only", "structures": ("head", "interm")},
    {"name": "emodb-emotion-macs0.5", "task": "emodb-emotion", "budget": "macs=0.5", "mode": "MAC"},
    # then, as time allows: the other modes at 0.7 / 0.3 and on EmoDB
    {"name": "fsdd-word-size0.7", "task": "fsdd-word", "budget": "size=0.7", "mode": "Size"},
    {"name": "fsdd-word-size0.3", "task": "fsdd-word", "budget": "size=0.3", "mode": "Size"},
    {"name": "fsdd-word-sepmacs0.7", "task": "fsdd-word", "budget": "frontend-macs=0.7,transformer-macs=0.7",
     "mode": "SepMAC"},
    {"name": "fsdd-word-sepmacs0.3", "task": "fsdd-word", "budget": "frontend-macs=0.3,transformer-macs=0.3",
     "mode": "SepMAC"},
    {"name": "emodb-emotion-size0.5", "task": "emodb-emotion", "budget": "size=0.5", "mode": "Size"},
    {"name": "emodb-emotion-sepmacs0.5", "task": "emodb-emotion", "budget": "frontend-macs=0.5,transformer-macs=0.5",
     "mode": "SepMAC"},
    {"name": "emodb-emotion-transformer-only-macs0.5", "task": "emodb-emotion", "budget": "macs=0.5",
     "mode": "MAC, transformer only", "structures": ("head", "interm")},
    # EmoDB at 70 % / 30 % in every mode, and transformer-only pruning at the same budgets on both tasks
    *[{"name": f"emodb-emotion-{tag}{b}", "task": "emodb-emotion", "budget": spec.format(b=b), "mode": mode}
      for b in ("0.7", "0.3")
      for tag, spec, mode in (("macs", "macs={b}", "MAC"), ("size", "size={b}", "Size"),
                              ("sepmacs", "frontend-macs={b},transformer-macs={b}", "SepMAC"))],
    *[{"name": f"{task}-transformer-only-macs{b}", "task": task, "budget": f"macs={b}",
       "mode": "MAC, transformer only", "structures": ("head", "interm")}
      for task in ("fsdd-word", "emodb-emotion") for b in ("0.7", "0.3")],
    # 2 epochs of plain fine-tuning of the pruned model (the calibrated masks can land far from what the gates
    # trained for when the Lagrangian lags the target): at the goal point and where pruning collapsed
    {"name": "fsdd-word-macs0.5-ft2", "task": "fsdd-word", "budget": "macs=0.5", "mode": "MAC + 2 ft epochs",
     "options": {"finetune_epochs": 2}},
    {"name": "emodb-emotion-macs0.3-ft2", "task": "emodb-emotion", "budget": "macs=0.3", "mode": "MAC + 2 ft epochs",
     "options": {"finetune_epochs": 2}},
    {"name": "fsdd-word-sepmacs0.3-ft2", "task": "fsdd-word", "budget": "frontend-macs=0.3,transformer-macs=0.3",
     "mode": "SepMAC + 2 ft epochs", "options": {"finetune_epochs": 2}},
    # a faster Lagrangian for short runs: gates start less saturated (p0 0.1: log α 2.2 instead of 4.6), gate and
    # λ lr 0.5, target reached after 30 % of the updates — does training itself then reach the budget?
    *[{"name": f"{task}-macs{b}-fast", "task": task, "budget": f"macs={b}", "mode": "MAC, fast Lagrangian",
       "options": {"p0_keep": 0.1, "gate_lr": 0.5, "reg_lr": 0.5, "target_warmup": 0.3}}
      for task, b in (("fsdd-word", "0.5"), ("emodb-emotion", "0.3"))],
    # the same two follow-ups at the goal point on EmoDB
    {"name": "emodb-emotion-macs0.5-ft2", "task": "emodb-emotion", "budget": "macs=0.5", "mode": "MAC + 2 ft epochs",
     "options": {"finetune_epochs": 2}},
    {"name": "emodb-emotion-macs0.5-fast", "task": "emodb-emotion", "budget": "macs=0.5",
     "mode": "MAC, fast Lagrangian", "options": {"p0_keep": 0.1, "gate_lr": 0.5, "reg_lr": 0.5, "target_warmup": 0.3}},
]
LATENCY_ROUNDS = 15


def latency_pair(teacher: Any, pruned: Any, threads: int = 1, rounds: int = LATENCY_ROUNDS) -> dict[str, Any]:
    """Median ms per 1-clip forward of teacher and pruned model, interleaved in one process at fixed threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        wav = [np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 0.1]
        times: dict[str, list[float]] = {"teacher": [], "pruned": []}
        encs = {"teacher": teacher, "pruned": pruned}
        inputs = {}
        from speechprune.models.classifier import classifier_inputs

        for k, e in encs.items():
            e.model.eval()
            inputs[k] = classifier_inputs(e, wav)
            with torch.no_grad():
                for _ in range(3):
                    e.model(**inputs[k])
        load0 = os.getloadavg()
        with torch.no_grad():
            for r in range(rounds):
                order = ["teacher", "pruned"] if r % 2 == 0 else ["pruned", "teacher"]
                for k in order:
                    t0 = time.perf_counter()
                    encs[k].model(**inputs[k])
                    times[k].append(1000 * (time.perf_counter() - t0))
        med = {k: float(np.median(v)) for k, v in times.items()}
        return {"threads": threads, "rounds": rounds, "ms_median": med, "ms_all": times,
                "speedup": med["teacher"] / med["pruned"], "load_avg_before": load0, "load_avg_after": os.getloadavg()}
    finally:
        torch.set_num_threads(old)


def truncation_at(task: str, macs: float) -> dict[str, Any] | None:
    path = LAYER_RESULTS / task / "depths.json"
    if not path.exists():
        return None
    rows = json.loads(path.read_text())
    below = [r for r in rows if r["macs_per_clip"] <= macs * 1.02]
    pick = max(below, key=lambda r: r["macs_per_clip"]) if below else min(rows, key=lambda r: r["macs_per_clip"])
    return {"depth": pick["depth"], "test_accuracy": pick["test_accuracy"], "macs_per_clip": pick["macs_per_clip"]}


def run_one(run: dict[str, Any], quick: bool) -> dict[str, Any]:
    out_json = (RESULTS if not quick else Path("/tmp/speechprune-structured-quick")) / "runs" / f"{run['name']}.json"
    if out_json.exists():
        return json.loads(out_json.read_text())
    task = TASKS[run["task"]]
    ds = load_task_data(task)
    if quick:
        from speechprune.models.classifier import add_classification_head

        pick = np.random.default_rng(0).choice(len(ds), size=min(80, len(ds)), replace=False)
        ds = ds.subset(sorted(pick.tolist()), name=ds.name + "-quick")
        labels = sorted(set(ds.labels(task["label"])))
        teacher = add_classification_head(load_encoder("tiny:whisper"), labels)
        teacher_metrics: dict[str, Any] = {}
        cfg = TrainConfig(**{**TRAIN.to_dict(), "epochs": 2, "lr": 1e-3})
    else:
        tdir = TEACHERS / run["task"] / "depth6"
        teacher = load_encoder(tdir)
        teacher_metrics = json.loads((tdir / "metrics.json").read_text())
        cfg = TRAIN
    model_dir = (WORK if not quick else out_json.parent / "models") / run["name"]
    resume = work_dir_for(model_dir).exists()
    opts = PruneOptions(**{**OPTIONS.__dict__, "budgets": run["budget"],
                           "structures": tuple(run.get("structures", OPTIONS.structures)), **run.get("options", {})})
    t0 = time.perf_counter()
    res = prune_structured(teacher, ds, task["label"], model_dir, cfg=cfg, split=task["split"], options=opts,
                           resume=resume, overwrite=not resume, progress=False, latency_repeats=0)
    wall = time.perf_counter() - t0
    pruned = load_encoder(model_dir)
    lat = latency_pair(teacher, pruned)
    test = res["test"]
    t_cost = teacher_metrics.get("cost", {})
    row = {
        **run, "structures": list(opts.structures), "model_dir": str(model_dir),
        "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
        "teacher_accuracy": teacher_metrics.get("accuracy"),
        "relative_accuracy": test["accuracy"] / teacher_metrics["accuracy"] if teacher_metrics else None,
        "params": test["cost"]["params_total"], "teacher_params": t_cost.get("params_total"),
        "macs_per_clip": test["cost"]["macs_per_clip"], "teacher_macs": t_cost.get("macs_per_clip"),
        "macs_analytic": res["costs"]["total-macs"]["final"], "macs_full_analytic": res["costs"]["total-macs"]["full"],
        "macs_parts": test["cost"]["macs_parts"], "costs": res["costs"],
        "budgets": res["budgets"], "budgets_before_calibration": res.get("budgets_before_calibration"),
        "calibration": res.get("calibration"), "budget_met": res["budget_met"],
        "max_abs_budget_error": res["max_abs_budget_error"], "kept_counts": res["kept_counts"],
        "stock_folder": res["stock_folder"], "selected_epoch": res["selected_epoch"],
        "history": [{k: v for k, v in h.items()} for h in res["training"]["history"]],
        "train_seconds": res["training"]["train_seconds"]
        + (res.get("finetune_after_pruning") or {}).get("train_seconds", 0.0), "wall_seconds": wall,
        "finetune_after_pruning": res.get("finetune_after_pruning"),
        "latency": lat, "truncation_at_same_macs": truncation_at(run["task"], test["cost"]["macs_per_clip"]),
        "train_config": cfg.to_dict(), "options": opts.to_dict(),
    }
    write_json_atomic(out_json, row)
    return row


def write_summary(rows: list[dict[str, Any]], dest: Path) -> None:
    table = []
    for r in rows:
        mac_gain = (r["teacher_macs"] / r["macs_per_clip"]) if r.get("teacher_macs") else None
        table.append({
            "run": r["name"], "mode": r["mode"], "budget": r["budget"], "test_accuracy": r["test_accuracy"],
            "teacher_accuracy": r["teacher_accuracy"], "relative_accuracy": r["relative_accuracy"],
            "macs_keep": r["macs_per_clip"] / r["macs_full_analytic"], "params_keep":
                r["params"] / r["teacher_params"] if r.get("teacher_params") else None,
            "max_abs_budget_error": r["max_abs_budget_error"], "budget_met": r["budget_met"],
            "uncalibrated_keep": {k: v["final_keep"] for k, v in (r["budgets_before_calibration"] or {}).items()},
            "latency_speedup": r["latency"]["speedup"], "mac_gain": mac_gain,
            "latency_gain_over_mac_gain": r["latency"]["speedup"] / mac_gain if mac_gain else None,
            "truncation": r["truncation_at_same_macs"], "train_seconds": r["train_seconds"],
            "load_avg": r["latency"]["load_avg_before"][0],
        })
    write_json_atomic(dest, table)


def markdown_table(dest: Path) -> str:
    """``results.md``: one row per finished run (from ``runs/*.json``), in ``RUNS`` order."""
    lines = ["| run | mode | budget (keep) | test acc | teacher acc | rel. acc | MACs kept (profiler) | "
             "params kept | Lagrangian final keep (before calibration) | budget error | latency ms pruned / teacher "
             "(1 thread) | speedup | MAC gain | speedup / MAC gain | truncation at ≤ same MACs (depth: acc, MACs kept) "
             "| train s |", "|" + "---|" * 16]
    for run in RUNS:
        path = RESULTS / "runs" / f"{run['name']}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        gain = r["teacher_macs"] / r["macs_per_clip"]
        lat = r["latency"]
        before = ", ".join(f"{k} {v['final_keep']:.3f}" for k, v in (r["budgets_before_calibration"] or {}).items())
        err = ", ".join(f"{v['budget_error']:+.4f}" for v in r["budgets"].values())
        tr = r["truncation_at_same_macs"] or {}
        lines.append(
            f"| {r['name']} | {r['mode']} | {r['budget']} | {r['test_accuracy']:.4f} | {r['teacher_accuracy']:.4f} | "
            f"{r['relative_accuracy']:.4f} | {r['macs_per_clip'] / r['teacher_macs']:.3f} | "
            f"{r['params'] / r['teacher_params']:.3f} | {before} | {err} | "
            f"{lat['ms_median']['pruned']:.1f} / {lat['ms_median']['teacher']:.1f} | {lat['speedup']:.2f} | "
            f"{gain:.2f} | {lat['speedup'] / gain:.2f} | k={tr.get('depth')}: {tr.get('test_accuracy', 0):.4f}, "
            f"{tr.get('macs_per_clip', 0) / r['teacher_macs']:.3f} | {r['train_seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    dest.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--table", action="store_true", help="Only rewrite results.md and summary.json from the finished runs.")
    args = ap.parse_args()
    if args.table:
        done = [RESULTS / "runs" / f"{r['name']}.json" for r in RUNS]
        write_summary([json.loads(p.read_text()) for p in done if p.exists()], RESULTS / "summary.json")
        print(markdown_table(RESULTS / "results.md"))
        return
    torch.manual_seed(0)
    runs = [r for r in RUNS if not args.only or r["name"] in args.only]
    if args.quick:
        runs = runs[:3]
    rows = []
    for run in runs:
        t0 = time.perf_counter()
        row = run_one(run, args.quick)
        rows.append(row)
        dest = (RESULTS if not args.quick else Path("/tmp/speechprune-structured-quick")) / "summary.json"
        write_summary(rows, dest)
        print(f"{run['name']}: acc {row['test_accuracy']:.3f} (teacher {row['teacher_accuracy']}), "
              f"MACs keep {row['macs_per_clip'] / row['macs_full_analytic']:.3f}, "
              f"speedup {row['latency']['speedup']:.2f}, {time.perf_counter() - t0:.0f} s", flush=True)
    if not args.quick:
        markdown_table(RESULTS / "results.md")


if __name__ == "__main__":
    main()
