"""Experiment tracking: ``report_to="tensorboard"`` writes event files with the training and validation curves
into the output folder (through accelerate's trackers), and a missing tracker package fails before training."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechprune.data.splits import SplitSpec
from speechprune.errors import SpeechpruneError
from speechprune.models import load_encoder
from speechprune.train.finetune import finetune
from speechprune.train.loop import TrainConfig
from tests.test_train import tone_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [p.parent for p in logdir.rglob("events.out.tfevents.*")]
    assert runs, f"no TensorBoard event file under {logdir}"
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_finetune_report_to_tensorboard_writes_the_curves(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "ft"
    cfg = TrainConfig(epochs=2, batch_size=8, lr=2e-3, report_to="tensorboard", freeze_front_end=False)
    res = finetune(load_encoder("tiny:wav2vec2"), tone_dataset(n=30), "word", out, cfg, SplitSpec(seed=0),
                   progress=False, latency_repeats=1)
    scalars = _scalars(out / "logs")
    for tag in ("train/loss", "train/epoch_loss", "val/loss", "val/accuracy"):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    steps = res["training"]["global_step"]
    assert len(scalars["train/loss"]) == steps  # one point per update
    assert [s for s, _ in scalars["val/accuracy"]] == [h["step"] for h in res["training"]["history"]]
    assert [v for _, v in scalars["val/loss"]] == pytest.approx([h["val_loss"] for h in res["training"]["history"]])


def test_unknown_or_missing_tracker_fails_before_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(SpeechpruneError, match="report_to must be one of none, tensorboard, wandb"):
        TrainConfig(report_to="mlflow").validate()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SpeechpruneError, match="pip install wandb"):
        finetune(load_encoder("tiny:wav2vec2"), tone_dataset(n=30), "word", tmp_path / "x",
                 TrainConfig(epochs=1, report_to="wandb"), SplitSpec(seed=0), progress=False)
