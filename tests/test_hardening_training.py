"""Issue 15: no silent wrong results from training or splits — a non-finite learning rate or loss stops with a
clear error and keeps nothing; conflicting split options are refused by every command, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _hardening import audiofolder, cli


@pytest.mark.parametrize("flag", [["--lr", "inf"], ["--lr", "nan"], ["--head-lr", "inf"], ["--seed", "-1"]])
def test_non_finite_learning_rates_and_bad_seeds_are_refused_up_front(tmp_path: Path, flag: list[str]) -> None:
    data = audiofolder(tmp_path / "d")
    res = cli("finetune", "tiny:wav2vec2", str(data), "-l", "word", "-o", str(tmp_path / "o"), *flag, "--no-progress")
    assert res.code == 2 and len(res.error_lines) == 1, res.err
    assert flag[0].lstrip("-").replace("-", "_").split("_")[0] in res.error_lines[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.training").exists()


def test_a_loss_that_becomes_nan_stops_training_and_keeps_nothing(tmp_path: Path) -> None:
    from speechprune.data.sources import load_data
    from speechprune.models import load_encoder
    from speechprune.train import finetune as ft
    from speechprune.train.guards import DivergedError
    from speechprune.train.loop import TrainConfig, cross_entropy_loss

    calls = {"n": 0}

    def exploding(model, batch):
        loss, logits = cross_entropy_loss(model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 3 else loss), logits

    data = audiofolder(tmp_path / "d", n=12)
    ds = load_data(str(data), ["word"])
    out = tmp_path / "model"
    import speechprune.train.loop as loop

    orig = loop.Trainer.__init__

    def init(self, *a, **kw):
        kw["loss_fn"] = exploding
        orig(self, *a, **kw)

    loop.Trainer.__init__ = init
    try:
        with pytest.raises(DivergedError, match="loss became nan"):
            ft.finetune(load_encoder("tiny:wav2vec2"), ds, "word", out, TrainConfig(epochs=3, batch_size=4, seed=0),
                        progress=False)
    finally:
        loop.Trainer.__init__ = orig
    assert not out.exists() and not ft.work_dir_for(out).exists()  # no model, no checkpoint to resume into garbage


def test_weights_that_became_infinite_are_caught(tmp_path: Path) -> None:
    from speechprune.train.guards import DivergedError, check_weights

    model = torch.nn.Linear(2, 2)
    check_weights(model)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(DivergedError, match="weight"):
        check_weights(model)


SPLIT_CONFLICT = ["--split-column", "split", "--test-groups", "s1"]


@pytest.mark.parametrize("command", [
    ["finetune", "tiny:wav2vec2", "DATA", "-l", "word", "-o", "OUT", "--group", "speaker"],
    ["evaluate", "tiny:wav2vec2", "DATA", "-l", "word", "--group", "speaker"],
    ["prune", "layers", "tiny:wav2vec2", "-o", "OUT", "--no-retrain", "--data", "DATA", "-l", "word",
     "--group", "speaker"],
    ["prune", "structured", "tiny:wav2vec2", "DATA", "-l", "word", "-o", "OUT", "--group", "speaker"],
    ["distill", "tiny:wav2vec2", "DATA", "-l", "word", "-o", "OUT", "--group", "speaker"],
])
def test_conflicting_split_options_are_refused_by_every_command(tmp_path: Path, command: list[str]) -> None:
    data = audiofolder(tmp_path / "d", columns="file_name,word,speaker")
    args = [str(data) if a == "DATA" else str(tmp_path / "o") if a == "OUT" else a for a in command]
    res = cli(*args, *SPLIT_CONFLICT)
    assert res.code == 2 and len(res.error_lines) == 1, res.err
    assert "--split-column" in res.error_lines[0] and "--test-groups" in res.error_lines[0]
    assert not (tmp_path / "o").exists()


def test_run_refuses_conflicting_split_options_and_bad_values_before_any_work(tmp_path: Path) -> None:
    data = audiofolder(tmp_path / "d")
    base = ["run", "model=tiny:wav2vec2", f"data={data}", "label=word", "group=speaker", f"out={tmp_path / 'o'}"]
    for bad, culprit in [(["split.split_column=speaker", "split.test_groups=s1"], "--split-column"),
                         (["split.test_fraction=1.5"], "test_fraction"),
                         (["compress.structured.enabled=true", "compress.structured.budgets=macs=2"], "budget"),
                         (["train.lr=.inf"], "lr"), (["seed=-1"], "seed"),
                         (["compress.distill.enabled=true", "compress.distill.mimickers=cnn:1:1"], "mimicker")]:
        res = cli(*base, *bad)
        assert res.code == 2 and len(res.error_lines) == 1 and culprit in res.error_lines[0], (bad, res.err)
        assert not (tmp_path / "o").exists()


def test_val_groups_ignored_by_a_split_column_are_refused(tmp_path: Path) -> None:
    from speechprune.data.sources import load_data
    from speechprune.data.split_rules import SplitConflictError
    from speechprune.data.splits import SplitSpec, make_splits

    rows = "".join(f"x{i}.wav,w{i % 2},s{i % 4},{s}\n" for i, s in enumerate(["validation"] * 2))
    data = audiofolder(tmp_path / "d", n=8, columns="file_name,word,speaker,split")
    meta = (data / "metadata.csv").read_text().splitlines()
    split = ["train", "train", "train", "train", "test", "test", "validation", "validation"]
    (data / "metadata.csv").write_text("\n".join([meta[0]] + [f"{m},{s}" for m, s in zip(meta[1:], split)]) + "\n")
    ds = load_data(str(data), ["word", "split"], "speaker")
    with pytest.raises(SplitConflictError, match="--val-groups"):
        make_splits(ds, "word", SplitSpec(split_column="split", val_groups=["s1"]))
    assert rows  # (kept simple: the column already has validation rows)
