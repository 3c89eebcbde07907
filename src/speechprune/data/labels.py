"""Label values as classes: surrounding whitespace is never part of a class, and values that differ only by case
or by numeric form (``zero``/``ZERO``, ``0``/``0.0``/``00``) are reported, because they silently become separate
classes otherwise. They are *not* merged: ``A`` and ``a`` may be different classes on purpose — the warning says
which values to check."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

from speechprune.errors import SpeechpruneWarning


class LabelWarning(SpeechpruneWarning):
    """Label values that look like the same class written differently."""


def clean_label(value: str) -> str:
    """A label value as a class name: surrounding whitespace (including a stray ``\\r``) removed."""
    return value.strip()


def canonical(value: str) -> str:
    """The form two spellings of one class share: case-folded text, or the number for numeric values."""
    v = value.strip()
    try:
        x = float(v)
    except ValueError:
        return v.casefold()
    if math.isfinite(x):
        return repr(float(x))
    return v.casefold()


def near_duplicates(values: Iterable[str]) -> list[list[str]]:
    """Groups of distinct values that share a canonical form (each group sorted, groups in order of appearance)."""
    by_form: dict[str, list[str]] = {}
    for v in dict.fromkeys(values):
        by_form.setdefault(canonical(v), []).append(v)
    return [sorted(g) for g in by_form.values() if len(g) > 1]


def warn_near_duplicates(source: str, column: str, values: Iterable[str]) -> list[list[str]]:
    groups = near_duplicates(values)
    if groups:
        shown = "; ".join(" / ".join(repr(v) for v in g) for g in groups[:5])
        more = f" (and {len(groups) - 5} more)" if len(groups) > 5 else ""
        warnings.warn(f"{source}: column {column!r} has values that differ only by case or number format and count "
                      f"as separate classes: {shown}{more}; fix the metadata if they are the same class",
                      LabelWarning, stacklevel=3)
    return groups
