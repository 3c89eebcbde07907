"""Three-way discipline of ``speechprune run``: no choice reads test labels. The same run on the same audio with the
test clips' labels shuffled among themselves must make every choice — best epoch, convexity depth, removal orders
and depths, the candidates kept, the chance guard, the recommendation — identically; only test numbers move."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from speechprune.data.sources import write_audiofolder
from speechprune.data.types import AudioDataset, AudioItem
from speechprune.pipeline import load_run_config, run_pipeline
from tests.test_train import tone_dataset

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def shuffled_test_labels(ds: AudioDataset, test_group: str, seed: int = 0) -> AudioDataset:
    test = [i for i, it in enumerate(ds.items) if it.group == test_group]
    words = [ds.items[i].labels["word"] for i in test]
    perm = np.random.default_rng(seed).permutation(len(words))
    new = {i: words[p] for i, p in zip(test, perm)}
    items = [AudioItem(key=it.key, labels={**it.labels, "word": new.get(i, it.labels["word"])}, group=it.group,
                       array=it.array, sampling_rate=it.sampling_rate) for i, it in enumerate(ds.items)]
    return AudioDataset(items, ds.label_columns, ds.group_column, ds.name)


def choices(out: Path, res: dict) -> dict:
    stage = lambda name: json.loads((out / "stages" / f"{name}.json").read_text())["result"]  # noqa: E731
    base = json.loads((out / "models" / "baseline" / "training.json").read_text())
    removal = stage("removal")
    evaluate = stage("evaluate")
    return {
        "best_epoch": base["training"]["best_epoch"],
        "truncate_depth": stage("truncate")["choice"]["depth"],
        "removal_validation_curves": [(r["order"], r["removed_layers"], r["val_accuracy"]) for r in removal["rows"]],
        "candidates": [c["name"] for c in res["candidates"]],
        "validation_accuracy": {n: v["validation"]["accuracy"] for n, v in evaluate["candidates"].items()},
        "chance_guard": evaluate["chance_guard"]["above_chance"],
        "recommended": [c["name"] for c in res["candidates"] if c["recommended"]],
    }


def run_both(tmp_path: Path, extra: list[str], chooser=None) -> dict:
    """The same run on the true data and on the data with the test clips' labels shuffled."""
    ds = tone_dataset(n=45)
    runs = {}
    for tag, data in (("true", ds), ("shuffled", shuffled_test_labels(ds, "4"))):
        folder = write_audiofolder(data, tmp_path / tag / "data")
        out = tmp_path / tag / "run"
        cfg = load_run_config(None, [
            "model=tiny:wav2vec2", f"data={folder}", "label=word", "group=speaker", "split.test_groups=4",
            "split.val_fraction=0.3", "train.epochs=2", "train.lr=2e-3", "train.freeze_front_end=false",
            f"out={out}", "latency_repeats=0", "recommend_min_retained=0.9", *extra])
        res = run_pipeline(cfg, progress=False, log=lambda _m: None)
        runs[tag] = ((chooser or choices)(out, res), res)
    return runs


def test_shuffling_test_labels_changes_no_choice(tmp_path: Path) -> None:
    """The validation path (``selection.cv=never``: every choice on the validation split, however small)."""
    runs = run_both(tmp_path, ["selection.cv=never", "analysis.metrics=convexity", "analysis.permutations=1",
                               "compress.removal.orders=backward,block-influence"])
    (true, res_true), (shuffled, res_shuffled) = runs["true"], runs["shuffled"]
    assert true == shuffled
    assert true["recommended"], "the guard should let this run recommend (validation is above chance)"
    test_acc = lambda r: [c["accuracy"] for c in r["candidates"]]  # noqa: E731
    assert test_acc(res_true) != test_acc(res_shuffled)  # the shuffle did reach the test numbers
    assert all(c["n_test"] == 9 and c["accuracy_low"] <= c["accuracy"] <= c["accuracy_high"]
               for c in res_true["candidates"])
    assert (tmp_path / "true" / "run" / "predictions" / "baseline.csv").read_text().count("\n") == 1 + 9 + \
        true_val_n(tmp_path / "true" / "run")


def true_val_n(out: Path) -> int:
    return json.loads((out / "stages" / "evaluate.json").read_text())["result"]["n"]["validation"]


def cv_choices(out: Path, res: dict) -> dict:
    stage = lambda name: json.loads((out / "stages" / f"{name}.json").read_text())["result"]  # noqa: E731
    cv, removal, evaluate = stage("crossval"), stage("removal"), stage("evaluate")
    return {
        "best_epoch": json.loads((out / "models" / "baseline" / "training.json").read_text())["training"]["best_epoch"],
        "folds": (cv["folds"], cv["fold_sizes"], cv["epochs"]),
        "out_of_fold": [(p["key"], p["predicted"]) for p in cv["predictions"]],
        "cv_removal_curves": [(r["order"], r["removed"], r["cv_accuracy"]) for r in cv["methods"]["removal"]["rows"]],
        "removal_chosen_on": removal["chosen_on"],
        "candidates": [c["name"] for c in res["candidates"]],
        "chance_guard": (evaluate["chance_guard"]["split"], evaluate["chance_guard"]["above_chance"]),
        "selection": evaluate["selection"],
        "recommended": [c["name"] for c in res["candidates"] if c["recommended"]],
    }


def test_cross_validation_fallback_changes_no_choice_when_test_labels_are_shuffled(tmp_path: Path) -> None:
    """Validation of 12 clips (< 30): the run falls back to leave-one-speaker-out cross-validation over the training
    + validation clips for the removal depth and the chance guard, records which choices used it (with n) and which
    stayed on validation, and still reads no test label."""
    runs = run_both(tmp_path, ["analysis.enabled=false", "compress.truncate.enabled=false", "export.onnx=false",
                               "compress.removal.orders=backward,block-influence"], cv_choices)
    (true, res_true), (shuffled, res_shuffled) = runs["true"], runs["shuffled"]
    assert true == shuffled
    assert [c["accuracy"] for c in res_true["candidates"]] != [c["accuracy"] for c in res_shuffled["candidates"]]
    ev = res_true["evidence"]
    assert ev["crossval"]["applied"] and ev["crossval"]["folds"] == 4 and ev["crossval"]["grouped"]  # 4 speakers
    assert ev["crossval"]["n"] == 36 and ev["n"]["test"] == 9  # the pool is train + validation, never test
    assert true["folds"][1] == [[27, 9]] * 4 and len(true["out_of_fold"]) == 36
    assert true["removal_chosen_on"].startswith("cross-validation (4 folds") and true["chance_guard"][0].startswith(
        "cross-validation")
    on = {e["choice"].split(" (")[0]: (e["chosen_on"], e["n"], e["note"]) for e in true["selection"]}
    assert on["removal depth per order"][0].startswith("cross-validation") and on["removal depth per order"][1] == 36
    assert on["chance guard"][0].startswith("cross-validation")
    for choice in ("best epoch", "recommended candidate"):
        assert on[choice][0] == "validation" and on[choice][1] == ev["n"]["validation"]
        assert "re-fine-tuned" in on[choice][2]
    assert "Fallback: group-aware cross-validation" in ev["validation"]["note"]
    report = (tmp_path / "true" / "run" / "report.md").read_text()
    assert "How each choice was made" in report and "removal depth per order: cross-validation" in report
    rows = json.loads((tmp_path / "true" / "run" / "stages" / "removal.json").read_text())["result"]["rows"]
    assert all(r["n_cv"] == 36 and "cv_retained" in r for r in rows)
