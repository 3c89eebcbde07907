"""Which split options may be combined, checked where a split spec is made — so every command (``finetune``,
``evaluate``, ``prune``, ``distill``, ``run``) refuses a conflict before any work, as ``analyze`` always did, instead
of silently ignoring one of the options while recording both.

* a split column decides train/test itself: held-out test groups cannot be combined with it;
* validation groups must not also be test groups;
* fractions are strictly between 0 and 1, and the seed is a valid seed.

(Validation groups with a split column are checked against the data in :func:`check_against_column`: they are
refused only when the column already has validation rows, i.e. when they would be ignored.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from speechprune.errors import DataError
from speechprune.utils.checks import check_fraction, check_seed


class SplitConflictError(DataError):
    """Split options that contradict each other."""


def _norm(groups: Any) -> list[str]:
    if groups is None:
        return []
    if isinstance(groups, str):
        groups = [groups]
    return [str(g).strip() for g in groups if str(g).strip()]


def check_split_options(split_column: str | None = None, test_groups: Sequence[Any] | None = None,
                        val_groups: Sequence[Any] | None = None, test_fraction: float = 0.2,
                        val_fraction: float = 0.1, seed: int = 0) -> None:
    tg, vg = _norm(test_groups), _norm(val_groups)
    if split_column and tg:
        raise SplitConflictError(
            f"--split-column {split_column} and --test-groups {','.join(tg)} conflict: the split column already "
            "decides which clips are test clips; give one of them")
    both = sorted(set(tg) & set(vg))
    if both:
        raise SplitConflictError(f"group(s) {', '.join(both)} are in both --test-groups and --val-groups")
    check_fraction(test_fraction, "test_fraction")
    check_fraction(val_fraction, "val_fraction")
    check_seed(seed)


def check_spec(spec: Any) -> None:
    """:func:`check_split_options` on any object with SplitSpec's fields."""
    check_split_options(spec.split_column, spec.test_groups, spec.val_groups, spec.test_fraction, spec.val_fraction,
                        spec.seed)


def check_against_column(column: str, has_validation: bool, val_groups: Sequence[Any] | None) -> None:
    vg = _norm(val_groups)
    if vg and has_validation:
        raise SplitConflictError(
            f"--val-groups {','.join(vg)} would be ignored: split column {column!r} already has validation rows; "
            "give one of them")
