"""Train / validation / test splits for fine-tuning and evaluation, from one small spec shared by every command.

Three ways to split, in order of precedence:

1. ``split_column`` — the data say it: ``train``; ``validation``/``valid``/``val``/``dev``; ``test``.
2. ``test_groups`` — hold whole groups out (e.g. EmoDB speakers 14, 15, 16: speaker-independent evaluation).
3. otherwise a stratified random test split of ``test_fraction``.

Validation (for early stopping and model selection) comes from the data when they have it, else from
``val_groups`` (held out of training like the test groups), else a stratified ``val_fraction`` of the training
pool. Every class of the label must occur in the training split; a class seen only in validation or test is an
error, because the classifier could never predict it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from speechprune.data.split_rules import check_against_column, check_spec
from speechprune.data.splits import group_holdout_indices, stratified_split_indices
from speechprune.data.types import AudioDataset
from speechprune.errors import DataError

TRAIN_VALUES = {"train"}
VAL_VALUES = {"validation", "valid", "val", "dev"}
TEST_VALUES = {"test"}


@dataclass
class SplitSpec:
    split_column: str | None = None
    test_groups: list[str] = field(default_factory=list)
    val_groups: list[str] = field(default_factory=list)
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    seed: int = 0
    #: The data's group column when the split was made (recorded so ``evaluate`` can rebuild the same split).
    group_column: str | None = None

    def __post_init__(self) -> None:
        check_spec(self)  # conflicting options fail here, before any work

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_splits(ds: AudioDataset, label: str, spec: SplitSpec) -> dict[str, np.ndarray]:
    """Index arrays ``{"train", "validation", "test"}`` into ``ds`` (sorted, disjoint)."""
    labels = ds.labels(label)  # raises a clear DataError for an unknown column
    if spec.split_column:
        train, val, test = _from_column(ds, spec.split_column)
        check_against_column(spec.split_column, len(val) > 0, spec.val_groups)
    elif spec.test_groups:
        pool, test = group_holdout_indices(ds, spec.test_groups)
        train, val = pool, np.array([], dtype=np.int64)
    else:
        pool, test = stratified_split_indices(ds, label, spec.test_fraction, spec.seed)
        train, val = pool, np.array([], dtype=np.int64)
    if len(val) == 0:
        train, val = _carve_validation(ds, label, train, spec)
    parts = {"train": np.sort(train), "validation": np.sort(val), "test": np.sort(test)}
    check_classes(labels, parts, label, ds.name)
    return parts


def check_classes(labels: Sequence[str], parts: dict[str, np.ndarray], label: str, name: str) -> None:
    """Every class outside the training split must also be inside it."""
    seen = {labels[i] for i in parts["train"]}
    if len(seen) < 2:
        raise DataError(f"{name}: the training split has {len(seen)} class(es) of {label!r}; need at least 2")
    for part in ("validation", "test"):
        missing = sorted({labels[i] for i in parts[part]} - seen)
        if missing:
            raise DataError(
                f"{name}: class(es) {', '.join(map(repr, missing))} of {label!r} occur in the {part} split but not "
                "in the training split; the classifier could never predict them (change the split or drop them)"
            )


def _from_column(ds: AudioDataset, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = [str(v).strip().lower() for v in ds.labels(column)]
    unknown = sorted(set(values) - TRAIN_VALUES - VAL_VALUES - TEST_VALUES)
    if unknown:
        raise DataError(
            f"{ds.name}: split column {column!r} has value(s) {unknown}; allowed: train, validation "
            f"(or valid/val/dev), test"
        )
    pick = lambda allowed: np.array([i for i, v in enumerate(values) if v in allowed], dtype=np.int64)  # noqa: E731
    train, val, test = pick(TRAIN_VALUES), pick(VAL_VALUES), pick(TEST_VALUES)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{ds.name}: split column {column!r} needs both 'train' and 'test' items")
    return train, val, test


def _carve_validation(ds: AudioDataset, label: str, pool: np.ndarray, spec: SplitSpec) -> tuple[np.ndarray, np.ndarray]:
    sub = ds.subset(pool.tolist())
    if spec.val_groups:
        tr, va = group_holdout_indices(sub, spec.val_groups)
    else:
        tr, va = stratified_split_indices(sub, label, spec.val_fraction, spec.seed + 1)
    return pool[tr], pool[va]
