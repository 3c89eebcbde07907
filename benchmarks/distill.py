"""Distillation experiment on the real model (issue 5): Whisper base teachers fine-tuned on FSDD words and EmoDB
emotions (held-out speakers), distilled into MLP and transformer mimickers of several sizes and the no-mimicker
baseline; test accuracy, parameters (whole model and the replaced stack), MACs, FLOP-counter check and latency
measured back-to-back against the teacher in one process.

The teachers are the full-depth (6-layer) fine-tuned classifiers of ``benchmarks/layer_pruning.py``
(``~/.cache/speechprune/experiments/layer_pruning/<task>/depth6``); data subsets, windows and splits are taken from
that script's ``TASKS`` / ``load_task_data`` so teacher and student accuracies are on the same test clips.

Everything is written as it goes to ``benchmarks/results/distill_whisper-base/<task>/`` (``runs.json`` one row per
student, ``latency.json``, ``table.md``, ``summary.json``); a finished student is not redone on a re-run and an
interrupted one resumes. Students are kept in ``~/.cache/speechprune/experiments/distill/<task>/<variant>``.

    python benchmarks/distill.py                      # both tasks (each waits for nothing: skipped if no teacher)
    python benchmarks/distill.py fsdd-word            # one task
    python benchmarks/distill.py fsdd-word --latency-only   # re-measure latency of the finished students
    python benchmarks/distill.py --quick              # wiring check on a tiny random Whisper teacher (seconds)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechprune.compress.distill import DistillConfig, distill, load_student, student_cost
from speechprune.compress.distill.evaluate import (
    compare_latency,
    dummy_student_inputs,
    evaluate_student,
    flop_counter_macs,
    teacher_latency_inputs,
)
from speechprune.data.splits import make_splits
from speechprune.models import load_encoder
from speechprune.train.evaluate import classification_metrics, predict_logits
from speechprune.train.loop import TrainConfig
from speechprune.utils.io import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "distill_whisper-base"
CACHE = Path(os.environ.get("SPEECHPRUNE_CACHE", Path.home() / ".cache" / "speechprune"))
TEACHERS = CACHE / "experiments" / "layer_pruning"
WORK = CACHE / "experiments" / "distill"

_spec = importlib.util.spec_from_file_location("layer_pruning_bench", HERE / "layer_pruning.py")
layer_pruning = importlib.util.module_from_spec(_spec)  # the teachers' own task definitions, not a copy
_spec.loader.exec_module(layer_pruning)  # type: ignore[union-attr]
TASKS = {k: v for k, v in layer_pruning.TASKS.items() if k in ("fsdd-word", "emodb-emotion")}

INTERMEDIATE = 3  # 2-block mimickers: the first block regresses the teacher's state 3 (of 6)


def stage(epochs: int, lr: float = 1e-3, seed: int = 0) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=16, lr=lr, schedule="constant", warmup_ratio=0.0, max_grad_norm=1.0,
                       patience=6, seed=seed)


# name → (mimicker, hidden, blocks, intermediate, freeze mimicker in stage 2[, positions, seed])
VARIANTS: dict[str, tuple[Any, ...]] = {
    "none": ("none", 0, 0, None, True),
    "mlp-h16-2b": ("mlp", 16, 2, INTERMEDIATE, True),
    "mlp-h64-1b": ("mlp", 64, 1, None, True),
    "mlp-h64-2b": ("mlp", 64, 2, INTERMEDIATE, True),
    "mlp-h256-2b": ("mlp", 256, 2, INTERMEDIATE, True),
    "mlp-h64-2b-unfrozen": ("mlp", 64, 2, INTERMEDIATE, False),
    "transformer-h64-1b": ("transformer", 64, 1, None, True),
    "transformer-h256-2b": ("transformer", 256, 2, INTERMEDIATE, True),
    # second round: the best size's neighbours, its ablations and a second seed
    "mlp-h128-2b": ("mlp", 128, 2, INTERMEDIATE, True),
    "mlp-h256-1b": ("mlp", 256, 1, None, True),
    "mlp-h256-2b-noint": ("mlp", 256, 2, None, True),
    "mlp-h256-2b-nopos": ("mlp", 256, 2, INTERMEDIATE, True, False),
    "mlp-h256-2b-unfrozen": ("mlp", 256, 2, INTERMEDIATE, False),
    "mlp-h256-2b-seed1": ("mlp", 256, 2, INTERMEDIATE, True, True, 1),
    # third round: the best student's ablations and a second seed
    "mlp-h256-1b-nopos": ("mlp", 256, 1, None, True, False),
    "mlp-h256-1b-unfrozen": ("mlp", 256, 1, None, False),
    "mlp-h256-1b-seed1": ("mlp", 256, 1, None, True, True, 1),
}


def run_task(name: str, quick: bool, epochs: tuple[int, int], only: list[str] | None, latency_only: bool) -> None:
    task = TASKS[name]
    out = RESULTS / name if not quick else Path("/tmp/speechprune-distill-quick") / name
    work = WORK / name if not quick else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    ds = layer_pruning.load_task_data(task)
    if quick:
        from speechprune.models.classifier import add_classification_head

        pick = np.random.default_rng(0).choice(len(ds), size=min(80, len(ds)), replace=False)
        ds = ds.subset(sorted(pick.tolist()), name=ds.name + "-quick")
        labels = sorted(set(ds.labels(task["label"])))
        teacher = add_classification_head(load_encoder("tiny:whisper", window_seconds=task["window"]), labels)
        teacher_dir = None
    else:
        teacher_dir = TEACHERS / name / "depth6"
        if not (teacher_dir / "metrics.json").exists():
            print(f"{name}: no teacher yet at {teacher_dir}; skipped", flush=True)
            return
        teacher = load_encoder(str(teacher_dir))
        recorded = json.loads((teacher_dir / "training.json").read_text())["split_spec"]
        now = task["split"].to_dict()
        extra = [k for k in set(now) - set(recorded) if now[k] is not None]
        if any(now.get(k) != v for k, v in recorded.items()) or extra:
            raise SystemExit(f"{name}: teacher was trained with split {recorded}, the task says {task['split']}")
    label = task["label"]
    parts = make_splits(ds, label, task["split"])
    teacher_row = _teacher_row(teacher, teacher_dir, ds, label, parts, out)
    runs_path = out / "runs.json"
    rows: list[dict[str, Any]] = json.loads(runs_path.read_text()) if runs_path.exists() else []
    done = {r["variant"] for r in rows}
    for variant, spec in VARIANTS.items():
        if variant in done or latency_only or (only and variant not in only):
            continue
        kind, hidden, blocks, inter, freeze, positions, seed = (*spec, *(True, 0)[len(spec) - 5:])
        cfg = DistillConfig(mimicker=kind, hidden=hidden or 1, blocks=blocks or 1, intermediate=inter,
                            freeze_mimicker=freeze, positions=positions, stage1=stage(epochs[0], seed=seed),
                            stage2=stage(epochs[1], seed=seed), teacher_batch_size=8, seed=seed)
        model_dir = work / variant
        resume = (model_dir.parent / f".{model_dir.name}.training").exists()
        t0 = time.perf_counter()
        res = distill(teacher, ds, label, model_dir, cfg, task["split"], resume=resume, overwrite=not resume,
                      progress=False, evaluate_test=False)
        wall = time.perf_counter() - t0
        student = load_student(model_dir)
        test = evaluate_student(student, None, ds, label, parts["test"], batch_size=16)
        cost = student_cost(student, teacher, seconds=task["window"])
        counted = flop_counter_macs(student, dummy_student_inputs(student, task["window"]))
        row = {
            "variant": variant, "mimicker": kind, "hidden": hidden if kind != "none" else None,
            "blocks": blocks, "intermediate_state": inter, "mimicker_frozen_in_stage2": freeze,
            "positions": positions, "seed": seed,
            "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
            "accuracy_vs_teacher": test["accuracy"] / teacher_row["test_accuracy"],
            "params_total": cost["params_total"], "params_stack": cost["params_stack"],
            "params_fraction": cost["params_fraction"], "stack_params_fraction": cost["stack_params_fraction"],
            "macs_per_clip": cost["macs_per_clip"], "macs_flop_counter": counted,
            "mac_gain": cost["mac_gain"], "macs_parts": cost["macs_parts"],
            "stage1_best_val_mse": res.get("stage1", {}).get("best_validation_mse"),
            "stage1_test_mse": res.get("stage1", {}).get("test_mse"),
            "stage1_epochs": res.get("stage1", {}).get("epochs_run"),
            "stage2_epochs": res["stage2"]["epochs_run"], "stage2_best_val_accuracy":
                res["stage2"]["best_validation_accuracy"],
            "train_seconds": res.get("stage1", {}).get("train_seconds", 0.0) + res["stage2"]["train_seconds"],
            "wall_seconds": wall, "teacher_pass_seconds": res["teacher_pass_seconds"], "saved_as": res["saved_as"],
            "load_avg": os.getloadavg()[0],
        }
        rows.append(row)
        write_json_atomic(runs_path, rows)
        print(f"{name}: {variant}: acc {row['test_accuracy']:.3f} ({100 * row['accuracy_vs_teacher']:.1f}% of "
              f"teacher), stack {100 * row['stack_params_fraction']:.2f}%, {row['mac_gain']:.1f}x fewer MACs, "
              f"{wall:.0f} s", flush=True)
    lat = _latency(teacher, work, rows, out, task["window"], quick)
    _summarise(name, teacher_row, rows, lat, out)


def _teacher_row(teacher: Any, teacher_dir: Path | None, ds: Any, label: str, parts: dict, out: Path) -> dict:
    path = out / "teacher.json"
    if path.exists():
        return json.loads(path.read_text())
    from speechprune.compress.distill.student import teacher_stack_params
    from speechprune.models.classifier import class_names
    from speechprune.profile.macs import count_macs
    from speechprune.profile.params import count_params

    logits = predict_logits(teacher, ds, parts["test"], batch_size=8)
    classes = class_names(teacher)
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[ds.labels(label)[i]] for i in parts["test"]])
    m = classification_metrics(y, logits.argmax(1), classes)
    stack = teacher_stack_params(teacher)
    row = {
        "teacher_dir": str(teacher_dir) if teacher_dir else "tiny:whisper (random)", "data": ds.name,
        "splits": {k: int(len(v)) for k, v in parts.items()}, "window_s": teacher.window_seconds,
        "test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"],
        "recorded_test_accuracy": json.loads((teacher_dir / "metrics.json").read_text())["accuracy"]
        if teacher_dir else None,
        "params_total": count_params(teacher.model)["total"], "params_stack": stack["stack"],
        "params_layers": stack["layers"],
        "macs_per_clip": count_macs(teacher.model, round(teacher.window_seconds * 16000)),
    }
    write_json_atomic(path, row)
    return row


def _latency(teacher: Any, work: Path, rows: list[dict], out: Path, seconds: float, quick: bool) -> dict[str, Any]:
    """Teacher and every finished student, interleaved in one process, 1 thread."""
    models = {"teacher": (teacher.model.eval(), teacher_latency_inputs(teacher, seconds))}
    for r in rows:
        st = load_student(work / r["variant"])
        models[r["variant"]] = (st, dummy_student_inputs(st, seconds))
    lat = compare_latency(models, rounds=3 if quick else 15, repeats=3 if quick else 10, warmup=3, threads=1)
    lat["_settings"]["note"] = ("median of rounds x repeats forwards per model, models interleaved, each round in a "
                                "seeded random order; model inputs only (log-mel extraction excluded, identical for "
                                "all)")
    write_json_atomic(out / "latency.json", lat)
    return lat


def _summarise(name: str, teacher: dict, rows: list[dict], lat: dict, out: Path) -> None:
    t_ms = lat["teacher"]["median_ms"]
    for r in rows:
        ms = lat.get(r["variant"], {}).get("median_ms")
        r["latency_ms"] = ms
        r["latency_gain"] = t_ms / ms if ms else None
        r["latency_over_mac_gain"] = r["latency_gain"] / r["mac_gain"] if ms else None
    write_json_atomic(out / "runs.json", rows)
    # students of one architecture (same MACs; they differ only in weights / the free position add) were timed as
    # separate entries: their spread is the measurement noise, their pooled median the architecture's latency
    by_arch: dict[str, list[dict]] = {}
    for r in rows:
        by_arch.setdefault(f"{r['mimicker']}-h{r['hidden']}-{r['blocks']}b" if r["mimicker"] != "none" else "none",
                           []).append(r)
    arch = {}
    for key, rs in by_arch.items():
        ms = [r["latency_ms"] for r in rs if r["latency_ms"]]
        if not ms:
            continue
        med = float(np.median(ms))
        arch[key] = {"entries": [r["variant"] for r in rs], "latency_ms": ms, "pooled_median_ms": med,
                     "spread": (max(ms) - min(ms)) / med, "latency_gain": t_ms / med, "mac_gain": rs[0]["mac_gain"],
                     "latency_over_mac_gain": t_ms / med / rs[0]["mac_gain"]}
    eligible = [r for r in rows if r["mimicker"] != "none" and r["stack_params_fraction"] <= 0.05]
    best = max(eligible, key=lambda r: (r["test_accuracy"], -r["params_total"]), default=None)
    goal = None
    if best is not None:
        goal = {
            "best_variant": best["variant"], "accuracy_vs_teacher": best["accuracy_vs_teacher"],
            "stack_params_fraction": best["stack_params_fraction"],
            "latency_over_mac_gain": best["latency_over_mac_gain"],
            "accuracy_met": best["accuracy_vs_teacher"] >= 0.95, "size_met": best["stack_params_fraction"] <= 0.05,
            "latency_met": best["latency_over_mac_gain"] is not None and best["latency_over_mac_gain"] >= 0.8,
        }
        a = arch.get(f"{best['mimicker']}-h{best['hidden']}-{best['blocks']}b")
        goal["architecture_latency_over_mac_gain"] = a["latency_over_mac_gain"] if a else None
        goal["met"] = goal["accuracy_met"] and goal["size_met"] and goal["latency_met"]
    summary = {"task": name, "teacher": teacher, "teacher_latency_ms": t_ms, "latency_settings": lat["_settings"],
               "goal": "best mimicker with <= 5 % of the stack's params keeps >= 95 % of the teacher's accuracy; "
                       "latency gain >= 0.8 x MAC gain", "result": goal, "latency_by_architecture": arch,
               "analytic_macs_equal_flop_counter": all(r["macs_per_clip"] == r["macs_flop_counter"] for r in rows)}
    write_json_atomic(out / "summary.json", summary)
    lines = [
        f"Teacher: Whisper base fine-tuned, {teacher['window_s']:g} s window, test n={teacher['splits']['test']}: "
        f"accuracy {teacher['test_accuracy']:.3f}, {teacher['params_total'] / 1e6:.2f} M params "
        f"(stack {teacher['params_stack'] / 1e6:.2f} M), {teacher['macs_per_clip'] / 1e9:.3f} GMACs/clip, "
        f"{t_ms:.1f} ms (1 thread, load avg {lat['_settings']['loadavg_before'][0]:.1f}).",
        "",
        "| student | test acc | % of teacher | params | % of teacher | stack params | % of stack | GMACs/clip | MAC gain "
        "| latency ms | latency gain | latency gain / MAC gain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lg = f"{r['latency_gain']:.1f}x" if r["latency_gain"] else "–"
        ratio = f"{r['latency_over_mac_gain']:.2f}" if r["latency_over_mac_gain"] else "–"
        lines.append(
            f"| {r['variant']} | {r['test_accuracy']:.3f} | {100 * r['accuracy_vs_teacher']:.1f} | "
            f"{r['params_total'] / 1e6:.3f} M | {100 * r['params_fraction']:.2f} | {r['params_stack']:,} | "
            f"{100 * r['stack_params_fraction']:.2f} | {r['macs_per_clip'] / 1e9:.4f} | {r['mac_gain']:.1f}x | "
            f"{r['latency_ms']:.2f} | {lg} | {ratio} |")
    lines += ["", "Latency per architecture (entries of one architecture pooled; spread = (max − min) / median):", "",
              "| architecture | entries | pooled median ms | spread | latency gain | MAC gain | ratio |",
              "|---|---|---|---|---|---|---|"]
    for key, a in arch.items():
        lines.append(f"| {key} | {len(a['entries'])} | {a['pooled_median_ms']:.2f} | {100 * a['spread']:.0f} % | "
                     f"{a['latency_gain']:.1f}x | {a['mac_gain']:.1f}x | {a['latency_over_mac_gain']:.2f} |")
    if goal:
        lines += ["", f"Best mimicker within 5 % of the stack's parameters: **{goal['best_variant']}** — "
                      f"{100 * goal['accuracy_vs_teacher']:.1f} % of the teacher's accuracy, "
                      f"{100 * goal['stack_params_fraction']:.2f} % of its stack, latency gain / MAC gain "
                      f"{goal['latency_over_mac_gain']:.2f}: goal {'met' if goal['met'] else 'NOT met'} "
                      f"(accuracy {'ok' if goal['accuracy_met'] else 'missed'}, latency "
                      f"{'ok' if goal['latency_met'] else 'missed'})."]
    write_text_atomic(out / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--quick", action="store_true", help="tiny random Whisper teacher, 80 clips: the wiring")
    parser.add_argument("--variants", nargs="*", default=None, help=f"subset of {', '.join(VARIANTS)}")
    parser.add_argument("--latency-only", action="store_true", help="only re-measure latency and re-write tables")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epochs = (2, 2) if args.quick else (40, 30)
    for name in args.tasks or list(TASKS):
        run_task(name, args.quick, epochs, args.variants, args.latency_only)


if __name__ == "__main__":
    main()
