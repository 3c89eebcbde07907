"""The ``analyze`` job: features once, then every requested metric, each beside its chance level.

Writes one results folder::

    metrics.json             everything below, plus model/data/config provenance
    config.yaml              the resolved configuration
    similarity_<metric>.csv/.npy   labelled (L+1)×(L+1) matrices; similarity.png heatmaps with block boundaries
    blocks.json              block boundaries per similarity metric
    convexity.csv            state × label convexity with permutation chance level
    probes.csv               state × label probe accuracy / macro-F1 with permutation and majority baselines
    layers.png               convexity and probe curves against the state index
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from speechprune.errors import SpeechpruneError
from speechprune.utils.checks import check_seed
from speechprune.utils.console import console
from speechprune.utils.io import atomic_path, write_json_atomic, write_text_atomic

METRICS = ("similarity", "convexity", "probes")
SIMILARITIES = ("cosine", "cka", "cka_debiased", "mutual_knn")


@dataclass
class AnalysisConfig:
    """Everything that shapes an analysis (saved as ``config.yaml`` next to the results)."""

    labels: list[str]
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    similarity: list[str] = field(default_factory=lambda: ["cosine", "cka", "mutual_knn"])
    pooling: str = "mean"
    layers: list[int] | None = None
    batch_size: int = 8
    dtype: str = "fp32"
    device: str = "auto"  # extraction and the similarity/convexity kernels: auto | cpu | cuda | cuda:N
    knn_k: int = 10
    convexity_k: int = 10
    max_pairs: int = 5000
    # convexity scores a seeded random subset of at most this many rows (None: all), as mutual kNN does: its exact
    # paths grow like N^1.5 (analysis.convexity.convexity_by_labels); the rows used are recorded per result row
    convexity_max_rows: int | None = 20_000
    # pairs per class of each convexity permutation baseline (None: max_pairs); the expectation is the same, the
    # extra noise shows in chance_std, and the baselines are 3 of every 4 path sets (analysis.convexity)
    chance_pairs: int | None = 1000
    permutations: int = 3
    probe_folds: int = 5
    probe: str = "auto"  # logistic | ridge | auto (analysis.probes.resolve_probe: ridge above AUTO_RIDGE_ROWS rows)
    split_column: str | None = None
    test_groups: list[str] | None = None
    seed: int = 0
    processes: int = 2
    chunk_seconds: float | None = 30.0  # longer clips are encoded in chunks (speechprune.features.chunking)

    def validate(self) -> None:
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise SpeechpruneError(f"unknown metric(s) {bad}; choose from {', '.join(METRICS)}")
        bad = [m for m in self.similarity if m not in SIMILARITIES]
        if bad:
            raise SpeechpruneError(f"unknown similarity measure(s) {bad}; choose from {', '.join(SIMILARITIES)}")
        if not self.labels and ("convexity" in self.metrics or "probes" in self.metrics):
            raise SpeechpruneError("convexity and probes need at least one --label")
        from speechprune.analysis.probes import PROBES

        if self.probe not in PROBES:
            raise SpeechpruneError(f"unknown probe {self.probe!r}; choose from {', '.join(PROBES)}")
        if self.split_column and self.test_groups:
            raise SpeechpruneError("give either --split-column or --test-groups, not both")
        if self.chance_pairs is not None and self.chance_pairs < 1:
            raise SpeechpruneError(f"chance_pairs must be at least 1 (or none for max_pairs), got {self.chance_pairs}")
        if self.convexity_max_rows is not None and self.convexity_max_rows < 2:
            raise SpeechpruneError(f"convexity_max_rows must be at least 2 (or none for all rows), got "
                                   f"{self.convexity_max_rows}")
        check_seed(self.seed)


def analysis_features(encoder: Any, dataset: Any, cfg: AnalysisConfig, *, cache_dir: Path | None = None,
                      progress: bool = True) -> Any:
    """The features an analysis with ``cfg`` reads (extracted once and cached; under ``accelerate launch`` /
    ``torchrun`` the processes that call this together share the extraction)."""
    from speechprune.features import extract_features
    from speechprune.utils.device import resolve_device

    return extract_features(encoder, dataset, pooling=cfg.pooling, layers=cfg.layers, batch_size=cfg.batch_size,
                            dtype=cfg.dtype, device=str(resolve_device(cfg.device)), cache_dir=cache_dir,
                            progress=progress,
                            chunk_seconds=cfg.chunk_seconds)


def run_analysis(encoder: Any, dataset: Any, cfg: AnalysisConfig, out: Path, *, cache_dir: Path | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Run the analysis and write the results folder ``out``; returns the ``metrics.json`` content.

    In a multi-process launch every process helps extract the features, then only the main process analyses and
    writes; the others return an empty dict."""
    from speechprune.utils import distributed
    from speechprune.utils.device import resolve_device

    cfg.validate()
    cfg.device = str(resolve_device(cfg.device))  # "auto" → cuda/cpu, for extraction and the analysis kernels
    missing = [lab for lab in cfg.labels if lab not in dataset.label_columns]
    if missing:
        raise SpeechpruneError(
            f"label column(s) {missing} not in the data; available: {', '.join(dataset.label_columns)}"
        )
    main = distributed.is_main_process()
    plans = plan_probes(dataset, cfg) if "probes" in cfg.metrics else {}
    if main:
        for label, plan in plans.items():  # said before minutes of feature extraction, not after
            if plan.note:
                console.print(f"[yellow]probes {label}: {plan.note}[/yellow]")
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    timings: dict[str, float] = {}
    t = time.perf_counter()
    feats = analysis_features(encoder, dataset, cfg, cache_dir=cache_dir, progress=progress and main)
    timings["features"] = round(time.perf_counter() - t, 2)
    if not main:
        return {}
    result: dict[str, Any] = {
        "model": {k: v for k, v in encoder.describe().items()},
        "data": {"name": dataset.name, "n_items": len(dataset), "n_rows": feats.num_rows,
                 "features": str(feats.path)},
        "config": asdict(cfg),
        "states": feats.layers,
        "index_convention": "state 0 = input to the first transformer layer; state i = output of layer i",
    }
    if "similarity" in cfg.metrics:
        t = time.perf_counter()
        result["similarity"] = _similarity(feats, cfg, out)
        timings["similarity"] = round(time.perf_counter() - t, 2)
    if "convexity" in cfg.metrics:
        t = time.perf_counter()
        result["convexity"] = _convexity(feats, cfg, out, progress)
        timings["convexity"] = round(time.perf_counter() - t, 2)
    if "probes" in cfg.metrics:
        t = time.perf_counter()
        result["probes"] = _probes(feats, dataset, cfg, out, progress, plans)
        skipped = {lab: p.note for lab, p in plans.items() if not p.ok}
        if skipped:
            result["probes_skipped"] = skipped
        timings["probes"] = round(time.perf_counter() - t, 2)
    if "convexity" in cfg.metrics or "probes" in cfg.metrics:
        from speechprune.analysis.curves import plot_layer_curves

        plot_layer_curves(out / "layers.png", cfg.labels, result.get("convexity"), result.get("probes"),
                          title=f"{result['model'].get('source') or result['model']['family']} on {dataset.name}")
    result["summary"] = _summary(result)
    result["seconds"] = timings
    write_json_atomic(out / "metrics.json", result)
    return result


# --- similarity ------------------------------------------------------------------------------------------------
def _similarity(feats: Any, cfg: AnalysisConfig, out: Path) -> dict[str, Any]:
    from speechprune.analysis.blocks import find_blocks
    from speechprune.analysis.plots import plot_similarity_grid
    from speechprune.analysis.similarity import similarity_matrices

    console.print(f"similarity: {', '.join(cfg.similarity)} over {len(feats.layers)} states")
    mats = similarity_matrices(feats, metrics=tuple(cfg.similarity), k=cfg.knn_k,
                               baseline_permutations=cfg.permutations, seed=cfg.seed, device=cfg.device)
    res: dict[str, Any] = {}
    blocks_all = {}
    for name in cfg.similarity:
        mat = mats[name]
        mat.to_csv(out / f"similarity_{name}.csv")
        mat.to_npy(out / f"similarity_{name}.npy")
        finite = [i for i in range(len(mat.states)) if np.isfinite(mat.values[i]).all()]
        if len(finite) < len(mat.states):
            # a constant (dead) state has undefined similarity: find blocks among the others and say so
            dropped = [mat.states[i] for i in range(len(mat.states)) if i not in finite]
            console.print(f"[yellow]{name}: states {dropped} have undefined similarity; left out of block search")
            sub = mat.values[np.ix_(finite, finite)]
            blocks = find_blocks(sub, [mat.states[i] for i in finite], seed=cfg.seed)
        else:
            blocks = find_blocks(mat, seed=cfg.seed)
        blocks_all[name] = blocks
        base = mats.get(f"{name}_baseline")
        if base is not None:
            base.to_csv(out / f"similarity_{name}_chance.csv")
        res[name] = {
            "matrix": np.round(mat.values, 6).tolist(),
            "params": mat.params,
            "blocks": blocks.to_dict(),
            "offdiag_mean": _offdiag(mat.values),
            "chance_offdiag_mean": _offdiag(base.values) if base is not None else None,
        }
    write_json_atomic(out / "blocks.json", {k: v.to_dict() for k, v in blocks_all.items()})
    plot_similarity_grid({k: mats[k] for k in cfg.similarity}, out / "similarity.png", blocks=blocks_all,
                         title="layer-to-layer similarity (state 0 = input to layer 1)")
    return res


def _offdiag(m: np.ndarray) -> float:
    m = np.asarray(m, dtype=float)
    mask = ~np.eye(m.shape[0], dtype=bool)
    return float(np.nanmean(m[mask])) if mask.any() else float("nan")


# --- convexity -------------------------------------------------------------------------------------------------
def _convexity(feats: Any, cfg: AnalysisConfig, out: Path, progress: bool) -> dict[str, list[dict[str, Any]]]:
    from speechprune.analysis.convexity import convexity_by_labels

    n = len(feats.item_index)
    cap = cfg.convexity_max_rows
    rows = f"; a random {cap:,} of the {n:,} rows (convexity_max_rows)" if cap is not None and n > cap else ""
    console.print(f"convexity: {', '.join(cfg.labels)} over {len(feats.layers)} states "
                  f"({cfg.permutations} permutations; one kNN graph per state for all labels{rows})")
    res = convexity_by_labels(
        feats, cfg.labels, n_permutations=cfg.permutations, n_neighbors=cfg.convexity_k,
        max_pairs_per_class=cfg.max_pairs, seed=cfg.seed, processes=cfg.processes, progress=progress,
        device=cfg.device, max_rows=cfg.convexity_max_rows, chance_pairs_per_class=cfg.chance_pairs,
    )
    _write_rows(out / "convexity.csv", [
        {"label": lab, "state": r["state"], "convexity": r["score"], "std_error": r["std_error"],
         "chance": r.get("chance"), "chance_std": r.get("chance_std"), "n_pairs": r["n_pairs"],
         "unreachable_fraction": r["unreachable_fraction"], "rows": r["rows"],
         "chance_pairs_per_class": r.get("chance_pairs_per_class")}
        for lab, rows in res.items() for r in rows
    ])
    return res


# --- probes ----------------------------------------------------------------------------------------------------
def _probe_split(feats: Any, dataset: Any, cfg: AnalysisConfig) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    items = [dataset.items[i] for i in feats.item_index]
    if cfg.split_column:
        values = [it.labels.get(cfg.split_column) for it in items]
        if any(v is None for v in values):
            raise SpeechpruneError(f"split column {cfg.split_column!r} is missing for some items")
        train = np.asarray([i for i, v in enumerate(values) if v == "train"])
        test = np.asarray([i for i, v in enumerate(values) if v == "test"])
        if len(train) == 0 or len(test) == 0:
            raise SpeechpruneError(
                f"split column {cfg.split_column!r} must hold 'train' and 'test' values; found {sorted(set(values))}"
            )
        return (train, test), f"given split ({cfg.split_column}: {len(train)} train / {len(test)} test)"
    if cfg.test_groups:
        groups = [str(g) for g in feats.groups]
        unknown = sorted(set(cfg.test_groups) - set(groups))
        if unknown:
            raise SpeechpruneError(f"test groups {unknown} do not occur in group column {dataset.group_column!r}")
        test_mask = np.isin(groups, cfg.test_groups)
        return (np.flatnonzero(~test_mask), np.flatnonzero(test_mask)), (
            f"held-out groups {cfg.test_groups} ({int((~test_mask).sum())} train / {int(test_mask.sum())} test)"
        )
    if all(g is not None for g in feats.groups):
        return None, f"{cfg.probe_folds}-fold group-aware cross-validation ({dataset.group_column})"
    return None, f"{cfg.probe_folds}-fold stratified cross-validation"


def plan_probes(dataset: Any, cfg: AnalysisConfig) -> dict[str, Any]:
    """How each label will be probed, from the dataset's labels and groups alone (no features needed), so that a
    label that cannot be probed is reported — and skipped — before any work. Folds adapt to the data
    (:func:`speechprune.data.splits.plan_folds`); a given split is checked for test classes unseen in training.
    """
    from speechprune.data.splits import FoldPlan, plan_folds

    groups = dataset.groups()
    all_grouped = bool(groups) and all(g is not None for g in groups)
    plans: dict[str, Any] = {}
    for label in cfg.labels:
        y = dataset.labels(label)
        label_is_group = all_grouped and _label_is_group(y, groups)
        if cfg.split_column or (cfg.test_groups and not label_is_group):
            if cfg.split_column:
                values = [str(v) for v in dataset.labels(cfg.split_column)] if cfg.split_column in \
                    dataset.label_columns else []
                train = {y[i] for i, v in enumerate(values) if v == "train"}
                test = {y[i] for i, v in enumerate(values) if v == "test"}
            else:
                held = {str(g) for g in cfg.test_groups}
                train = {y[i] for i, g in enumerate(groups) if str(g) not in held}
                test = {y[i] for i, g in enumerate(groups) if str(g) in held}
            unseen = sorted(test - train)
            plans[label] = FoldPlan(1, False) if not unseen else FoldPlan(  # 1 = the given split
                0, False, f"skipped: class(es) {unseen[:10]} occur only in the probe test split")
            continue
        # The label *is* the group (speaker ID): a speaker-independent split would leave every test class unseen in
        # training, so this label is probed with stratified folds instead (reported in "split").
        plan = plan_folds(y, None if (label_is_group or not all_grouped) else groups, cfg.probe_folds)
        if not plan.ok:
            plan.note = f"skipped: {plan.note}"
        plans[label] = plan
    return plans


def _probes(feats: Any, dataset: Any, cfg: AnalysisConfig, out: Path, progress: bool,
            plans: dict[str, Any] | None = None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from speechprune.analysis.probes import probes_by_layer
    from speechprune.data.splits import cv_folds

    split, how = _probe_split(feats, dataset, cfg)
    all_grouped = all(g is not None for g in feats.groups)
    plans = plans if plans is not None else plan_probes(dataset, cfg)
    res: dict[str, Any] = {}
    for label in cfg.labels:
        plan = plans[label]
        if plan.n_splits == 0:
            continue  # reported before the work began
        y = feats.labels[label]
        k = plan.n_splits
        if split is not None and cfg.split_column:
            splits, label_how = [split], how
        elif all_grouped and _label_is_group(y, feats.groups):
            splits = cv_folds(y, n_splits=k, seed=cfg.seed)
            label_how = f"{k}-fold stratified cross-validation (label = group column)"
        elif split is not None:
            splits, label_how = [split], how
        else:
            splits = cv_folds(y, groups=feats.groups if all_grouped else None, n_splits=k, seed=cfg.seed)
            label_how = how.replace(f"{cfg.probe_folds}-fold", f"{k}-fold")
            if plan.grouped and k == len(set(map(str, feats.groups))):
                label_how = f"leave-one-group-out cross-validation ({dataset.group_column}, {k} groups)"
        bar = tqdm(total=len(feats.layers), desc=f"probes {label}", disable=not progress)
        res[label] = probes_by_layer(feats, label, splits=splits, seed=cfg.seed,
                                     n_permutations=cfg.permutations, progress=lambda: bar.update(1),
                                     probe=cfg.probe, device=cfg.device)
        bar.close()
        for r in res[label]:
            r["split"] = label_how
    _write_rows(out / "probes.csv", [
        {"label": lab, "state": r["state"], "accuracy": r["accuracy"], "accuracy_std": r["accuracy_std"],
         "macro_f1": r["macro_f1"], "chance_accuracy": r["chance_accuracy"],
         "majority_accuracy": r["majority_accuracy"], "probe": r["probe"], "split": r["split"]}
        for lab, rows in res.items() for r in rows
    ])
    return res


def _label_is_group(labels: list[str], groups: list[Any]) -> bool:
    return all(str(a) == str(b) for a, b in zip(labels, groups))


# --- summary ---------------------------------------------------------------------------------------------------
def _summary(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, rows in (result.get("convexity") or {}).items():
        best = max(rows, key=lambda r: r["score"])
        out.setdefault(label, {})["convexity_peak_state"] = best["state"]
        out[label]["convexity_peak"] = best["score"]
    for label, rows in (result.get("probes") or {}).items():
        if not rows:
            continue
        best = max(rows, key=lambda r: r["accuracy"])
        out.setdefault(label, {})["probe_peak_state"] = best["state"]
        out[label]["probe_peak_accuracy"] = best["accuracy"]
    for name, sim in (result.get("similarity") or {}).items():
        out.setdefault("_blocks", {})[name] = sim["blocks"].get("blocks")
    return out


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
