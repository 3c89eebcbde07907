"""The stages of ``speechprune run`` (see :mod:`speechprune.pipeline.runner` for caching and order).

Every stage returns a JSON-friendly dict. The baseline and every compression (a plug-in of
:mod:`speechprune.compress.base`, run by :func:`compress`) list their candidates as
:meth:`~speechprune.compress.base.Candidate.to_dict` data, so that profiling and the report treat them alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from speechprune.compress.base import BASELINE, Candidate, Compression, Teacher, finetune_candidate


def analysis(run: Any) -> dict[str, Any]:
    from speechprune.analysis.runner import run_analysis

    c = run.cfg
    # on the training + validation clips only: the truncation depth is chosen from these convexity scores
    res = run_analysis(run.encoder, run.selection_pool(), _analysis_config(run), run.out / "analysis",
                       progress=run.progress, cache_dir=Path(c.cache_dir) if c.cache_dir else None)
    return {"folder": str(run.out / "analysis"), "summary": res.get("summary", {}),
            "convexity": _convexity_scores(run.out / "analysis", c.label)}


def analysis_features(run: Any) -> None:
    """Fill the feature cache the analysis stage reads; every process of a multi-process run shares the work."""
    from speechprune.analysis.runner import analysis_features as features

    c = run.cfg
    features(run.encoder, run.selection_pool(), _analysis_config(run), progress=run.progress,
             cache_dir=Path(c.cache_dir) if c.cache_dir else None)


def _analysis_config(run: Any) -> Any:
    from speechprune.analysis.runner import AnalysisConfig

    c = run.cfg
    a = c.analysis
    # probe folds adapt to the data (smallest class, number of groups) inside the analysis
    acfg = AnalysisConfig(probe_folds=a.probe_folds, probe=a.probe, labels=c.analysis_labels, metrics=list(a.metrics),
                          similarity=list(a.similarity), permutations=a.permutations, max_pairs=a.max_pairs,
                          convexity_max_rows=a.convexity_max_rows, chance_pairs=a.chance_pairs,
                          knn_k=a.knn_k, convexity_k=a.convexity_k, pooling=a.pooling, processes=a.processes,
                          batch_size=c.batch_size, seed=42,  # probes cross-validate on the pool (no test clips)
                          device=str(run.device))
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


def baseline(run: Any) -> dict[str, Any]:
    cands = finetune_candidate(run.encoder, run.task(), run.workspace(), run.train_config(), BASELINE,
                               "unpruned (fine-tuned)")
    return {"candidates": [c.to_dict() for c in cands]}


def crossval(run: Any) -> dict[str, Any]:
    from speechprune.pipeline.crossval import crossval as run_crossval

    return run_crossval(run)


def compress(run: Any, method: Compression, options: Any) -> dict[str, Any]:
    """One compression's stage: its candidates (as plain data) and the details it recorded."""
    teacher = Teacher(Candidate.from_dict(run.results["baseline"]["candidates"][0]), lambda: run.encoder,
                      run.results.get("analysis"), run.results.get("crossval"))
    out = run.workspace()
    cands = method.run(teacher, run.task(), out, run.train_config(), options)
    return {"candidates": [c.to_dict() for c in cands], **out.details}


def evaluate(run: Any, candidates: list[Candidate]) -> dict[str, Any]:
    from speechprune.pipeline.evidence import evaluate_candidates

    return evaluate_candidates(run, candidates)


def profile(run: Any, candidates: list[Candidate]) -> dict[str, Any]:
    """Cost of every candidate: parameters and MACs (exact), and latency timed *interleaved* in one process — all
    candidates in rounds (A B C … repeated), median of round medians with the spread, flagged and re-measured once
    when the machine disturbed it (:func:`speechprune.profile.latency.interleaved_latency`). Latency ratios to the
    baseline (paired per round) are checked against MAC ratios."""
    import math
    import os
    import platform

    import torch

    from speechprune.compress.base import compression_for
    from speechprune.profile.latency import interleaved_latency, latency_mac_check, paired_ratios
    from speechprune.utils.hardware import cpu_model

    seconds, repeats = run.cfg.profile_seconds, run.cfg.latency_repeats
    costs = {c.name: c.cost(seconds, 0) for c in candidates}  # parameters and MACs; latency below
    latency: dict[str, Any] | None = None
    checks: dict[str, Any] = {}
    if repeats > 0 and candidates:
        forwards = {c.name: compression_for(c.method).forward(c, seconds) for c in candidates}
        latency = interleaved_latency(forwards, rounds=max(3, math.ceil(repeats / 3)), repeats=3, warmup=2,
                                      threads=1)
        for name, m in latency["models"].items():
            costs[name].update(latency_ms_median=m["median_ms"], latency_spread=m["spread"], latency_threads=1,
                               latency_flagged=latency["flagged"])
        base = next((c.name for c in candidates if c.method == BASELINE), None)
        if base in latency["models"]:
            checks = latency_mac_check({k: v["median_ms"] for k, v in latency["models"].items()},
                                       {k: v["macs_per_clip"] for k, v in costs.items()}, base,
                                       ratios=paired_ratios(latency, base))
    load = os.getloadavg()
    return {"costs": costs, "latency": latency, "latency_checks": checks,
            "hardware": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                         "latency_threads": 1, "load_avg": round(load[0], 2),
                         "load_avg_1_5_15": [round(x, 2) for x in load], "platform": platform.platform()}}


def export(run: Any, candidates: list[Candidate]) -> dict[str, Any]:
    """Every candidate as ONNX fp32 (+ int8) under ``OUT/onnx/<name>``, verified on the test split and timed
    against torch (interleaved, per candidate): the deployable rows of the report."""
    from speechprune.deploy.onnx import check_opset, export_onnx
    from speechprune.data.splits import make_splits

    c = run.cfg.export
    check_opset(c.opset)
    test = [int(i) for i in make_splits(run.dataset, run.cfg.label, run.split_spec())["test"]]
    out = {}
    for cand in candidates:
        res = export_onnx(cand.model_dir, run.out / "onnx" / cand.name, opset=c.opset,
                          quantize="int8" if c.int8 else None, dataset=run.dataset, label=run.cfg.label,
                          indices=test, threads=c.threads, seconds=run.cfg.profile_seconds,
                          latency_repeats=run.cfg.latency_repeats, batch_size=run.cfg.batch_size, overwrite=True)
        out[cand.name] = {"folder": str(run.out / "onnx" / cand.name), **{k: res[k] for k in (
            "files", "size_bytes", "check", "verification", "opset") if k in res}, "latency": res.get("latency")}
    return {"exports": out}


def report(run: Any, candidates: list[Candidate]) -> dict[str, Any]:
    from speechprune.report.build import build_report

    return build_report(run, candidates)


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
