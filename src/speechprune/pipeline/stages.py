"""The stages of ``speechprune run`` (see :mod:`speechprune.pipeline.runner` for caching and order).

Every stage returns a JSON-friendly dict; compression stages list their candidates as
``{"name", "kind", "model_dir", "accuracy", "macro_f1", ...}`` so that profiling and the report treat them alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from speechprune.errors import SpeechpruneError


def analysis(run: Any) -> dict[str, Any]:
    from speechprune.analysis.runner import AnalysisConfig, run_analysis

    c = run.cfg
    a = c.analysis
    # probe folds adapt to the data (smallest class, number of groups) inside the analysis
    acfg = AnalysisConfig(probe_folds=a.probe_folds, labels=c.analysis_labels, metrics=list(a.metrics),
                          similarity=list(a.similarity), permutations=a.permutations, max_pairs=a.max_pairs,
                          knn_k=a.knn_k, convexity_k=a.convexity_k, pooling=a.pooling, processes=a.processes,
                          batch_size=c.batch_size,
                          seed=42)  # probes cross-validate on the pool (the test clips are not in it)
    acfg.validate()
    # on the training + validation clips only: the truncation depth is chosen from these convexity scores
    res = run_analysis(run.encoder, run.selection_pool(), acfg, run.out / "analysis", progress=run.progress,
                       cache_dir=Path(c.cache_dir) if c.cache_dir else None)
    return {"folder": str(run.out / "analysis"), "summary": res.get("summary", {}),
            "convexity": _convexity_scores(run.out / "analysis", c.label)}


def _convexity_scores(folder: Path, label: str) -> dict[str, float]:
    import csv

    path = folder / "convexity.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("label") == label]
    return {str(int(r["state"])): float(r["convexity"]) for r in rows}


def _finetune(run: Any, encoder: Any, name: str, **meta: Any) -> dict[str, Any]:
    from speechprune.train.finetune import finetune, work_dir_for

    out = run.out / "models" / name
    resume = work_dir_for(out).exists()
    res = finetune(encoder, run.dataset, run.cfg.label, out, run.train_config(), run.split_spec(), resume=resume,
                   overwrite=not resume, progress=run.progress, latency_repeats=0, metadata=meta)
    if "test" not in res:  # another process of a multi-process run: the main process evaluates and saves
        return {"name": name}
    test = res["test"]
    return {"name": name, "model_dir": str(out), "accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
            "train_seconds": res["training"]["train_seconds"], "num_layers": res["num_layers"],
            "kept_layers": res["kept_layers_of_source"], **meta}


def baseline(run: Any) -> dict[str, Any]:
    return {"candidates": [{**_finetune(run, run.encoder, "baseline"), "kind": "unpruned (fine-tuned)"}]}


def truncate(run: Any) -> dict[str, Any]:
    from speechprune.compress.layers import choose_depth

    scores = (run.results.get("analysis") or {}).get("convexity") or _pretrained_convexity(run)
    choice = choose_depth({int(k): v for k, v in scores.items()}, run.cfg.compress.truncate.tolerance)
    enc = run.encoder
    if choice.depth >= enc.num_layers:
        return {"choice": choice.to_dict(), "candidates": [],
                "note": f"convexity peaks at the last layer ({choice.depth}): truncation keeps the whole model"}
    cand = _finetune(run, enc.keep_layers(choice.depth), f"truncate-k{choice.depth}", depth=choice.depth)
    return {"choice": choice.to_dict(), "candidates": [{**cand, "kind": f"convexity truncation (k = {choice.depth})"}]}


def _pretrained_convexity(run: Any) -> dict[str, float]:
    from speechprune.analysis.convexity import convexity_by_layer
    from speechprune.features.extract import extract_features

    from speechprune.utils.distributed import main_process_first

    with main_process_first():  # in a multi-process run the main process fills the feature cache, the others read it
        feats = extract_features(run.encoder, run.selection_pool(), pooling="mean", batch_size=run.cfg.batch_size,
                                 progress=run.progress)  # never the test clips: the depth is a choice
    return {str(r["state"]): r["score"] for r in convexity_by_layer(feats, run.cfg.label)}


def removal(run: Any) -> dict[str, Any]:
    import csv

    from speechprune.compress.layers import block_influence, plot_removal_curves, removal_curve, removal_order
    from speechprune.models import load_encoder
    from speechprune.train.splits import make_splits

    c = run.cfg
    base = run.results["baseline"]["candidates"][0]
    enc = load_encoder(base["model_dir"])
    parts = make_splits(run.dataset, c.label, run.split_spec())
    orders = list(c.compress.removal.orders)
    influence = None
    if any("influence" in o for o in orders):
        rng = np.random.default_rng(c.seed)
        probe = np.sort(rng.choice(parts["train"], size=min(200, len(parts["train"])), replace=False))
        influence = block_influence(enc, run.dataset, probe, batch_size=c.batch_size)
    # Two curves per order: validation (the depth is chosen on it) and test (recorded and reported, never read to
    # choose). Removal without retraining is cheap to evaluate, so both run in full.
    rows: list[dict[str, Any]] = []
    for order in orders:
        seq = removal_order(order, enc.num_layers, (influence or {}).get(order))
        curves = {split: removal_curve(enc, run.dataset, c.label, seq, parts[split], batch_size=c.batch_size,
                                       profile_seconds=c.profile_seconds, order_name=order, progress=run.progress)
                  for split in ("validation", "test")}
        for v, t in zip(curves["validation"], curves["test"]):
            rows.append({**{k: v[k] for k in ("order", "removed", "removed_layers", "kept_layers", "macs",
                                                "macs_fraction")},
                         "val_accuracy": v["accuracy"], "val_macro_f1": v["macro_f1"], "val_retained": v["retained"],
                         "test_accuracy": t["accuracy"], "test_macro_f1": t["macro_f1"],
                         "test_retained": t["retained"], "n_validation": len(parts["validation"]),
                         "n_test": len(parts["test"])})
    folder = run.out / "removal"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "removal.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot_removal_curves(rows, folder / "removal.png", title="layer removal without retraining")
    candidates = []
    for order in orders:
        ok = [r for r in rows if r["order"] == order and r["val_retained"] >= c.compress.removal.min_retained
              and r["removed"] > 0]
        if not ok:
            continue
        best = max(ok, key=lambda r: r["removed"])  # chosen on validation
        drop = [int(x) for x in best["removed_layers"].split()]
        name = f"removal-{order}-r{best['removed']}"
        pruned = enc.drop_layers(drop)
        pruned.save_pretrained(run.out / "models" / name, metadata={"removed_layers": drop, "order": order})
        candidates.append({"name": name, "kind": f"removal without retraining ({order}, {best['removed']} layers)",
                           "model_dir": str(run.out / "models" / name), "accuracy": best["test_accuracy"],
                           "macro_f1": best["test_macro_f1"], "val_accuracy": best["val_accuracy"],
                           "num_layers": pruned.num_layers, "kept_layers": pruned.kept_layers, "train_seconds": 0.0})
    return {"csv": str(folder / "removal.csv"), "plot": str(folder / "removal.png"), "rows": rows,
            "influence": {k: {str(i): v for i, v in d.items()} for k, d in (influence or {}).items()},
            "candidates": candidates}


def distill(run: Any) -> dict[str, Any]:
    try:
        from speechprune.compress.distill.pipeline import run_distill_stage  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SpeechpruneError("distillation is not available in this version of speechprune") from exc
    return run_distill_stage(run)


def structured(run: Any) -> dict[str, Any]:
    try:
        from speechprune.compress.structured.pipeline import run_structured_stage  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SpeechpruneError("structured pruning is not available in this version of speechprune") from exc
    return run_structured_stage(run)


def collect_candidates(run: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for stage in ("baseline", "truncate", "removal", "distill", "structured"):
        res = run.results.get(stage) or {}
        for cand in res.get("candidates", []):
            out.append({**cand, "stage": stage, "key": run.keys.get(stage)})
    return out


def evaluate(run: Any, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    from speechprune.pipeline.evidence import evaluate_candidates

    return evaluate_candidates(run, candidates)


def profile(run: Any, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Cost of every candidate: parameters and MACs (exact), and latency timed *interleaved* in one process — all
    candidates in rounds (A B C … repeated), median of round medians with the spread, flagged and re-measured once
    when the machine disturbed it (:func:`speechprune.profile.latency.interleaved_latency`). Latency ratios to the
    baseline (paired per round) are checked against MAC ratios."""
    import math
    import os
    import platform

    import torch

    from speechprune.models import load_encoder
    from speechprune.profile.latency import interleaved_latency, latency_mac_check, model_forward, paired_ratios
    from speechprune.train.evaluate import model_cost
    from speechprune.utils.hardware import cpu_model

    seconds, repeats = run.cfg.profile_seconds, run.cfg.latency_repeats
    costs: dict[str, Any] = {}
    forwards: dict[str, Any] = {}
    for cand in candidates:
        if cand.get("cost_fn"):  # models that are not transformers classes (e.g. distilled students)
            import importlib

            mod, fn = cand["cost_fn"].rsplit(":", 1)
            costs[cand["name"]] = getattr(importlib.import_module(mod), fn)(cand["model_dir"], seconds, 0)
            forwards[cand["name"]] = _student_forward(cand["model_dir"], seconds)
        else:
            enc = load_encoder(cand["model_dir"])
            costs[cand["name"]] = model_cost(enc, seconds=seconds, latency_repeats=0)
            forwards[cand["name"]] = model_forward(enc.model, seconds)
    latency: dict[str, Any] | None = None
    checks: dict[str, Any] = {}
    if repeats > 0 and forwards:
        latency = interleaved_latency(forwards, rounds=max(3, math.ceil(repeats / 3)), repeats=3, warmup=2,
                                      threads=1)
        for name, m in latency["models"].items():
            costs[name].update(latency_ms_median=m["median_ms"], latency_spread=m["spread"], latency_threads=1,
                               latency_flagged=latency["flagged"])
        base = next((k["name"] for k in candidates if k.get("stage") == "baseline"), None)
        if base in latency["models"]:
            checks = latency_mac_check({k: v["median_ms"] for k, v in latency["models"].items()},
                                       {k: v["macs_per_clip"] for k, v in costs.items()}, base,
                                       ratios=paired_ratios(latency, base))
    load = os.getloadavg()
    return {"costs": costs, "latency": latency, "latency_checks": checks,
            "hardware": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                         "latency_threads": 1, "load_avg": round(load[0], 2),
                         "load_avg_1_5_15": [round(x, 2) for x in load], "platform": platform.platform()}}


def _student_forward(model_dir: str, seconds: float) -> Any:
    import torch

    from speechprune.compress.distill.evaluate import dummy_student_inputs
    from speechprune.compress.distill.export import load_student

    student = load_student(model_dir).eval()
    x = dummy_student_inputs(student, seconds)

    def run() -> None:
        with torch.inference_mode():
            student(**x)

    return run


def report(run: Any, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    from speechprune.report.build import build_report

    return build_report(run, candidates)


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
