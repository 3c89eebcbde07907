"""Splits: by column, group holdout (speaker-independent), stratified, group k-fold; one home for the split
options."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from speechprune.data.sources import load_audiofolder
from speechprune.data.splits import (
    SplitOptions,
    SplitSpec,
    group_holdout,
    group_holdout_indices,
    group_kfold,
    split_by_column,
    stratified_split,
    stratified_split_indices,
)
from speechprune.data.types import AudioDataset, AudioItem
from speechprune.errors import DataError


def _toy(n_per: dict[str, int], classes: tuple[str, ...] = ("a", "b", "c")) -> AudioDataset:
    """Items for groups with the given sizes; labels cycle through ``classes``."""
    items = []
    for g, n in n_per.items():
        for j in range(n):
            lab = {"emotion": classes[(len(items)) % len(classes)], "speaker": g, "split": "x" if j % 3 else "y"}
            items.append(AudioItem(key=f"{g}_{j}", labels=lab, group=g, array=np.zeros(4, np.float32),
                                   sampling_rate=16000))  # fmt: skip
    return AudioDataset(items, ["emotion", "speaker"], "speaker", "toy")


def test_group_holdout_on_emodb_keeps_speakers_disjoint(shared_data: Path) -> None:
    ds = load_audiofolder(shared_data / "emodb", label_columns=["emotion"], group_column="speaker")
    train, test = group_holdout(ds, [14, "15", 16])
    assert {it.group for it in test.items} == {"14", "15", "16"}
    assert not {it.group for it in train.items} & {it.group for it in test.items}
    assert len(train) + len(test) == len(ds)
    assert set(test.labels("emotion")) == set(ds.labels("emotion"))  # every emotion is in the held-out set


def test_group_holdout_errors() -> None:
    ds = _toy({"3": 4, "10": 5, "14": 3})
    tr, te = group_holdout_indices(ds, ["14"])
    assert te.tolist() == [9, 10, 11] and tr.tolist() == list(range(9))
    with pytest.raises(DataError, match=r"unknown speaker value\(s\) 99; available: 3, 10, 14"):
        group_holdout(ds, ["99"])
    with pytest.raises(DataError, match="leaves no training data"):
        group_holdout(ds, ["3", "10", "14"])
    no_groups = AudioDataset(ds.items, ["emotion"], None, "nogroups")
    with pytest.raises(DataError, match="no group column"):
        group_holdout(no_groups, ["3"])


def test_split_by_column_keeps_order() -> None:
    ds = _toy({"a": 6})
    parts = split_by_column(ds, "split")
    assert [it.key for it in parts["y"].items] == ["a_0", "a_3"]
    assert len(parts["x"]) == 4 and parts["x"].name == "toy:x"
    with pytest.raises(DataError, match="no column 'fold'"):
        split_by_column(ds, "fold")


def test_stratified_split_is_balanced_and_seeded() -> None:
    ds = _toy({"s": 60})
    tr, te = stratified_split_indices(ds, "emotion", 0.25, seed=1)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(60))
    assert Counter(ds.labels("emotion")[i] for i in te) == {"a": 5, "b": 5, "c": 5}
    tr2, te2 = stratified_split_indices(ds, "emotion", 0.25, seed=1)
    assert te.tolist() == te2.tolist()
    assert te.tolist() != stratified_split_indices(ds, "emotion", 0.25, seed=2)[1].tolist()
    train, test = stratified_split(ds, "emotion", 0.25, seed=1)
    assert [it.key for it in test.items] == [ds.items[i].key for i in te]


def test_stratified_split_rejects_singleton_class() -> None:
    items = _toy({"s": 6}).items + [AudioItem(key="odd", labels={"emotion": "rare", "speaker": "s"}, group="s")]
    ds = AudioDataset(items, ["emotion"], "speaker", "toy")
    with pytest.raises(DataError, match=r"'rare' of 'emotion' have a single example"):
        stratified_split(ds, "emotion", 0.3, seed=0)
    with pytest.raises(DataError, match="test_fraction"):
        stratified_split(_toy({"s": 6}), "emotion", 1.0)


def test_group_kfold_partitions_groups() -> None:
    sizes = {"g1": 10, "g2": 3, "g3": 7, "g4": 5, "g5": 8, "g6": 2}
    ds = _toy(sizes)
    folds = list(group_kfold(ds, 3, seed=0))
    assert len(folds) == 3
    groups = np.array(ds.groups())
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen.tolist()) == list(range(len(ds)))  # every item tested exactly once
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
        assert sorted(np.concatenate([tr, te]).tolist()) == list(range(len(ds)))
    loads = sorted(len(te) for _, te in folds)
    assert loads[-1] - loads[0] <= max(sizes.values())  # balanced by item count
    again = [te.tolist() for _, te in group_kfold(ds, 3, seed=0)]
    assert again == [te.tolist() for _, te in folds]
    with pytest.raises(DataError, match="cannot make 7 group folds from 6"):
        list(group_kfold(ds, 7))


def test_split_options_have_one_home() -> None:
    """Every command's split flags and the run configuration's ``split`` section take their defaults from
    :class:`SplitOptions`; a recorded :class:`SplitSpec` round-trips through its JSON form."""
    import dataclasses

    import typer

    from speechprune.cli.app import app
    from speechprune.pipeline.config import RunConfig

    defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
                for f in dataclasses.fields(SplitOptions)}
    root = typer.main.get_command(app)
    commands = {"finetune": root.commands["finetune"], "evaluate": root.commands["evaluate"],
                "distill": root.commands["distill"], "prune layers": root.commands["prune"].commands["layers"],
                "prune structured": root.commands["prune"].commands["structured"]}
    for name, cmd in commands.items():
        params = {p.name: p for p in cmd.params}
        for field_name, default in defaults.items():
            assert field_name in params, f"{name} lacks the split option {field_name}"
            got = params[field_name].default
            assert (list(got) if isinstance(default, list) else got) == default, (name, field_name)
    assert RunConfig().split == SplitOptions()
    spec = SplitOptions(test_groups=["3"], val_fraction=0.25).spec(seed=7, group_column="speaker")
    assert SplitSpec(**spec.to_dict()) == spec and spec.seed == 7 and spec.test_groups == ["3"]
