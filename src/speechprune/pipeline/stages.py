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


def baseline(run: Any) -> dict[str, Any]:
    cands = finetune_candidate(run.encoder, run.task(), run.workspace(), run.train_config(), BASELINE,
                               "unpruned (fine-tuned)")
    return {"candidates": [c.to_dict() for c in cands]}


def compress(run: Any, method: Compression, options: Any) -> dict[str, Any]:
    """One compression's stage: its candidates (as plain data) and the details it recorded."""
    teacher = Teacher(Candidate.from_dict(run.results["baseline"]["candidates"][0]), lambda: run.encoder,
                      run.results.get("analysis"))
    out = run.workspace()
    cands = method.run(teacher, run.task(), out, run.train_config(), options)
    return {"candidates": [c.to_dict() for c in cands], **out.details}


def profile(run: Any, candidates: list[Candidate]) -> dict[str, Any]:
    """Cost of every candidate, measured back to back in one process so that latencies are comparable."""
    from speechprune.utils.hardware import cpu_model

    costs = {c.name: c.cost(run.cfg.profile_seconds, run.cfg.latency_repeats) for c in candidates}
    import os
    import platform

    import torch

    return {"costs": costs, "hardware": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                                         "load_avg": os.getloadavg()[0], "platform": platform.platform()}}


def report(run: Any, candidates: list[Candidate]) -> dict[str, Any]:
    from speechprune.report.build import build_report

    return build_report(run, candidates)


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
