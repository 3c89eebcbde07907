"""Every split speechprune makes, in one place: the split spec, train/validation/test splits, group-aware
holdouts and the cross-validation folds of the probes.

Speech probes leak easily: the same speaker in train and test lets an "emotion" probe score well by
recognising voices. Group-aware splits (:func:`group_holdout`, :func:`group_kfold`, :func:`cv_folds` with
groups) keep each speaker on one side. All randomness takes an explicit ``seed`` so a split is reproducible from
its arguments alone.

Train / validation / test splits for fine-tuning and evaluation (:func:`make_splits`) come from one small spec
(:class:`SplitSpec`) shared by every command, the ``run`` configuration and the Python API. Three ways to split,
in order of precedence:

1. ``split_column`` — the data say it: ``train``; ``validation``/``valid``/``val``/``dev``; ``test``.
2. ``test_groups`` — hold whole groups out (e.g. EmoDB speakers 14, 15, 16: speaker-independent evaluation).
3. otherwise a stratified random test split of ``test_fraction``.

Validation (for early stopping and model selection) comes from the data when they have it, else from
``val_groups`` (held out of training like the test groups), else a stratified ``val_fraction`` of the training
pool. Every class of the label must occur in the training split; a class seen only in validation or test is an
error, because the classifier could never predict it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from speechprune.data.types import AudioDataset
from speechprune.errors import DataError, SpeechpruneError

__all__ = [
    "SplitOptions",
    "SplitSpec",
    "make_splits",
    "recorded_split",
    "check_classes",
    "cv_folds",
    "split_by_column",
    "group_holdout",
    "group_holdout_indices",
    "stratified_split",
    "stratified_split_indices",
    "group_kfold",
]

TRAIN_VALUES = {"train"}
VAL_VALUES = {"validation", "valid", "val", "dev"}
TEST_VALUES = {"test"}

#: (train rows, test rows) of one evaluation split.
Split = tuple[np.ndarray, np.ndarray]


@dataclass
class SplitOptions:
    """How to split, as a user says it: the split flags of every command and the ``split`` section of ``run``.

    These fields and their defaults are the only home of the split options; the CLI flags read them from here.
    """

    split_column: str | None = None
    test_groups: list[str] = field(default_factory=list)
    val_groups: list[str] = field(default_factory=list)
    test_fraction: float = 0.2
    val_fraction: float = 0.1

    def spec(self, seed: int = 0, group_column: str | None = None) -> SplitSpec:
        """The full :class:`SplitSpec` of these options with the run's ``seed`` (and group column, if known)."""
        return SplitSpec(split_column=self.split_column, test_groups=list(self.test_groups),
                         val_groups=list(self.val_groups), test_fraction=self.test_fraction,
                         val_fraction=self.val_fraction, seed=seed, group_column=group_column)


@dataclass
class SplitSpec(SplitOptions):
    """Everything that makes a split reproducible: the options plus the seed of the random parts.

    Recorded in every model folder's ``training.json`` (``split_spec``), so ``evaluate``, ``prune`` and
    ``distill`` can rebuild the exact split the model was fine-tuned with.
    """

    seed: int = 0
    #: The data's group column when the split was made (recorded so ``evaluate`` can rebuild the same split).
    group_column: str | None = None

    def __post_init__(self) -> None:
        from speechprune.data.split_rules import check_spec

        check_spec(self)  # conflicting options fail here, before any work

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recorded_split(model_dir: Any) -> SplitSpec | None:
    """The split a speechprune training recorded in the model folder's ``training.json`` (``split_spec``), if
    any: ``evaluate``, ``prune``, ``distill`` and ``export`` rebuild the exact split the model was fine-tuned with."""
    import json
    from pathlib import Path

    path = Path(model_dir) / "training.json"
    spec = json.loads(path.read_text()).get("split_spec") if path.is_file() else None
    return SplitSpec(**spec) if spec else None


def make_splits(ds: AudioDataset, label: str, spec: SplitSpec) -> dict[str, np.ndarray]:
    """Index arrays ``{"train", "validation", "test"}`` into ``ds`` (sorted, disjoint)."""
    labels = ds.labels(label)  # raises a clear DataError for an unknown column
    if spec.split_column:
        train, val, test = _from_column(ds, spec.split_column)
        from speechprune.data.split_rules import check_against_column

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


def cv_folds(
    labels: Sequence[str],
    *,
    groups: Sequence[Any] | None = None,
    n_splits: int = 5,
    seed: int = 0,
    split: Split | None = None,
) -> list[Split]:
    """Evaluation folds over label rows (the probes'): the given ``split``, else (group-aware when ``groups`` is
    given) stratified k-fold.

    Raises a clear error when the data cannot support the requested folds (fewer groups than folds, or a class
    with fewer examples than folds when there are no groups).
    """
    y = np.asarray(labels)
    if split is not None:
        train, test = (np.asarray(s, dtype=np.int64) for s in split)
        if len(train) == 0 or len(test) == 0:
            raise SpeechpruneError("the probe split has an empty training or test part")
        missing = sorted(set(y[test]) - set(y[train]))
        if missing:
            raise SpeechpruneError(f"classes {missing} occur in the test rows but never in the training rows")
        return [(train, test)]
    if n_splits < 2:
        raise SpeechpruneError(f"cross-validation needs at least 2 folds, got {n_splits}")
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold

    x_dummy = np.zeros(len(y))
    if groups is not None:
        g = np.asarray([str(v) for v in groups])
        n_groups = len(set(g))
        if n_groups < n_splits:
            raise SpeechpruneError(
                f"group-aware probing with {n_splits} folds needs at least {n_splits} groups; found {n_groups}"
            )
        counts = Counter(y.tolist())
        if min(counts.values()) >= n_splits:
            cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            return [(tr, te) for tr, te in cv.split(x_dummy, y, g)]
        return [(tr, te) for tr, te in GroupKFold(n_splits=n_splits).split(x_dummy, y, g)]
    counts = Counter(y.tolist())
    rare = sorted(c for c, n in counts.items() if n < n_splits)
    if rare:
        raise SpeechpruneError(
            f"classes {rare[:10]} have fewer than {n_splits} examples; stratified {n_splits}-fold probing needs at "
            f"least {n_splits} per class (use fewer folds, a given split, or drop those classes)"
        )
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in cv.split(x_dummy, y)]


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
