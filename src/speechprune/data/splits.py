"""Train/test splits that do not leak: by a split column, by held-out groups (speakers), stratified by label,
and group k-fold.

Speech probes leak easily: the same speaker in train and test lets an "emotion" probe score well by
recognising voices. Group-aware splits (:func:`group_holdout`, :func:`group_kfold`) keep each speaker on one
side. All randomness takes an explicit ``seed`` so a split is reproducible from its arguments alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np

from speechprune.data.types import AudioDataset
from speechprune.errors import DataError

__all__ = [
    "split_by_column",
    "group_holdout",
    "group_holdout_indices",
    "stratified_split",
    "stratified_split_indices",
    "group_kfold",
]


def _column_values(ds: AudioDataset, column: str) -> list[str]:
    """Values of ``column`` from the items' labels (a label column or any other metadata column)."""
    out: list[str] = []
    for it in ds.items:
        if column not in it.labels:
            avail = sorted(set().union(*(i.labels.keys() for i in ds.items))) if ds.items else []
            raise DataError(
                f"{ds.name}: item {it.key!r} has no column {column!r}; available: {', '.join(avail) or '(none)'}"
            )
        out.append(it.labels[column])
    return out


def _groups(ds: AudioDataset) -> list[str]:
    if ds.group_column is None:
        raise DataError(f"{ds.name}: has no group column; load it with group_column=... (e.g. 'speaker')")
    groups = ds.groups()
    for it, g in zip(ds.items, groups):
        if g is None or g == "":
            raise DataError(f"{ds.name}: item {it.key!r} has no value in group column {ds.group_column!r}")
    return [str(g) for g in groups]


def split_by_column(ds: AudioDataset, column: str = "split") -> dict[str, AudioDataset]:
    """One dataset per distinct value of ``column`` (e.g. fsdd's official ``train``/``test``), in first-seen order.

    Each part is named ``<name>:<value>`` and keeps item order.
    """
    values = _column_values(ds, column)
    parts: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        parts.setdefault(v, []).append(i)
    return {v: ds.subset(idx, name=f"{ds.name}:{v}") for v, idx in parts.items()}


def group_holdout_indices(ds: AudioDataset, test_groups: Sequence[str | int]) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (train, test): items whose group is in ``test_groups`` go to test, the rest to train.

    Groups are compared as strings (``14`` and ``"14"`` are the same speaker). An unknown group is an error
    rather than an empty test set, because a typo would otherwise evaluate on nothing.
    """
    groups = _groups(ds)
    wanted = [str(g) for g in test_groups]
    if not wanted:
        raise DataError(f"{ds.name}: no test groups given")
    known = sorted(set(groups), key=_natural)
    unknown = [g for g in wanted if g not in set(groups)]
    if unknown:
        raise DataError(
            f"{ds.name}: unknown {ds.group_column} value(s) {', '.join(unknown)}; available: {', '.join(known)}"
        )
    test_set = set(wanted)
    is_test = np.array([g in test_set for g in groups], dtype=bool)
    if is_test.all():
        raise DataError(f"{ds.name}: holding out {', '.join(wanted)} leaves no training data")
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def group_holdout(ds: AudioDataset, test_groups: Sequence[str | int]) -> tuple[AudioDataset, AudioDataset]:
    """(train, test) datasets with the listed groups (e.g. EmoDB speakers 14, 15, 16) held out for test."""
    tr, te = group_holdout_indices(ds, test_groups)
    return ds.subset(tr.tolist(), name=f"{ds.name}:train"), ds.subset(te.tolist(), name=f"{ds.name}:test")


def stratified_split_indices(
    ds: AudioDataset, label: str, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (train, test) with every class of ``label`` represented on both sides.

    Each class contributes ``round(n * test_fraction)`` items to test, clamped to 1..n-1, so a class with a
    single example cannot be stratified and raises :class:`DataError` naming it. Indices come back sorted.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    values = ds.labels(label)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(values):
        by_class[v].append(i)
    singles = sorted(c for c, idx in by_class.items() if len(idx) < 2)
    if singles:
        raise DataError(
            f"{ds.name}: class(es) {', '.join(repr(c) for c in singles)} of {label!r} have a single example; "
            "stratification needs at least two per class"
        )
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for c in sorted(by_class):  # sorted: the result must not depend on item order within the dict
        idx = np.array(by_class[c])
        n_test = min(max(int(round(len(idx) * test_fraction)), 1), len(idx) - 1)
        test.extend(rng.permutation(idx)[:n_test].tolist())
    test_arr = np.array(sorted(test), dtype=np.int64)
    mask = np.ones(len(ds), dtype=bool)
    mask[test_arr] = False
    return np.flatnonzero(mask), test_arr


def stratified_split(
    ds: AudioDataset, label: str, test_fraction: float = 0.2, seed: int = 0
) -> tuple[AudioDataset, AudioDataset]:
    """(train, test) datasets stratified by ``label``; see :func:`stratified_split_indices`."""
    tr, te = stratified_split_indices(ds, label, test_fraction, seed)
    return ds.subset(tr.tolist(), name=f"{ds.name}:train"), ds.subset(te.tolist(), name=f"{ds.name}:test")


def group_kfold(ds: AudioDataset, n_splits: int = 5, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``n_splits`` (train, test) index arrays; each group is in exactly one test fold.

    Groups are shuffled with ``seed``, then assigned largest first to the fold with the fewest items, so folds
    are balanced in items even when speakers have very different amounts of speech.
    """
    if n_splits < 2:
        raise DataError(f"group_kfold needs n_splits >= 2, got {n_splits}")
    groups = _groups(ds)
    uniq = sorted(set(groups), key=_natural)
    if n_splits > len(uniq):
        raise DataError(f"{ds.name}: cannot make {n_splits} group folds from {len(uniq)} {ds.group_column} value(s)")
    counts = {g: 0 for g in uniq}
    for g in groups:
        counts[g] += 1
    rng = np.random.default_rng(seed)
    order = [uniq[i] for i in rng.permutation(len(uniq))]
    order.sort(key=lambda g: -counts[g])  # stable: ties keep the shuffled order
    fold_of: dict[str, int] = {}
    load = [0] * n_splits
    for g in order:
        f = min(range(n_splits), key=lambda k: (load[k], k))
        fold_of[g] = f
        load[f] += counts[g]
    fold = np.array([fold_of[g] for g in groups])
    for k in range(n_splits):
        yield np.flatnonzero(fold != k), np.flatnonzero(fold == k)


def _natural(s: str) -> tuple[int, int | str]:
    """Sort key that orders numeric strings numerically ("3" < "14") and puts them before other strings."""
    return (0, int(s)) if s.isdigit() else (1, s)
