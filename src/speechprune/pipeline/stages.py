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
    from speechprune.analysis.runner import run_analysis

    c = run.cfg
    res = run_analysis(run.encoder, run.dataset, _analysis_config(run), run.out / "analysis", progress=run.progress,
                       cache_dir=Path(c.cache_dir) if c.cache_dir else None)
    return {"folder": str(run.out / "analysis"), "summary": res.get("summary", {}),
            "convexity": _convexity_scores(run.out / "analysis", c.label)}


def analysis_features(run: Any) -> None:
    """Fill the feature cache the analysis stage reads; every process of a multi-process run shares the work."""
    from speechprune.analysis.runner import analysis_features as features

    c = run.cfg
    features(run.encoder, run.dataset, _analysis_config(run), progress=run.progress,
             cache_dir=Path(c.cache_dir) if c.cache_dir else None)


def _analysis_config(run: Any) -> Any:
    from speechprune.analysis.runner import AnalysisConfig

    c = run.cfg
    groups = {g for g in run.dataset.groups() if g is not None}
    folds = min(5, len(groups)) if groups else 5  # group-aware folds cannot outnumber the groups
    if groups and folds < 2:
        folds = 2
    acfg = AnalysisConfig(probe_folds=folds, labels=c.analysis_labels, metrics=list(c.analysis.metrics),
                          similarity=list(c.analysis.similarity), permutations=c.analysis.permutations,
                          max_pairs=c.analysis.max_pairs, batch_size=c.batch_size,
                          split_column=c.split.split_column, test_groups=list(c.split.test_groups) or None,
                          seed=42)
    acfg.validate()
    return acfg


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

    # every process runs this stage: in a multi-process run they share the extraction
    feats = extract_features(run.encoder, run.dataset, pooling="mean", batch_size=run.cfg.batch_size,
                             progress=run.progress)
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
    rows: list[dict[str, Any]] = []
    for order in orders:
        seq = removal_order(order, enc.num_layers, (influence or {}).get(order))
        rows += removal_curve(enc, run.dataset, c.label, seq, parts["test"], batch_size=c.batch_size,
                              profile_seconds=c.profile_seconds, order_name=order, progress=run.progress)
    folder = run.out / "removal"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "removal.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot_removal_curves(rows, folder / "removal.png", title="layer removal without retraining")
    candidates = []
    for order in orders:
        ok = [r for r in rows if r["order"] == order and r["retained"] >= c.compress.removal.min_retained
              and r["removed"] > 0]
        if not ok:
            continue
        best = max(ok, key=lambda r: r["removed"])
        drop = [int(x) for x in best["removed_layers"].split()]
        name = f"removal-{order}-r{best['removed']}"
        pruned = enc.drop_layers(drop)
        pruned.save_pretrained(run.out / "models" / name, metadata={"removed_layers": drop, "order": order})
        candidates.append({"name": name, "kind": f"removal without retraining ({order}, {best['removed']} layers)",
                           "model_dir": str(run.out / "models" / name), "accuracy": best["accuracy"],
                           "macro_f1": best["macro_f1"], "num_layers": pruned.num_layers,
                           "kept_layers": pruned.kept_layers, "train_seconds": 0.0})
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


def profile(run: Any, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Cost of every candidate, measured back to back in one process so that latencies are comparable."""
    from speechprune.models import load_encoder
    from speechprune.train.evaluate import model_cost
    from speechprune.utils.hardware import cpu_model

    costs = {}
    for cand in candidates:
        seconds, repeats = run.cfg.profile_seconds, run.cfg.latency_repeats
        if cand.get("cost_fn"):  # models that are not transformers classes (e.g. distilled students)
            import importlib

            mod, fn = cand["cost_fn"].rsplit(":", 1)
            costs[cand["name"]] = getattr(importlib.import_module(mod), fn)(cand["model_dir"], seconds, repeats)
        else:
            costs[cand["name"]] = model_cost(load_encoder(cand["model_dir"]), seconds=seconds, latency_repeats=repeats)
    import os
    import platform

    import torch

    return {"costs": costs, "hardware": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                                         "load_avg": os.getloadavg()[0], "platform": platform.platform()}}


def report(run: Any, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    from speechprune.report.build import build_report

    return build_report(run, candidates)


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
