"""Value checks shared by every options object, so that a bad number fails before any work with a message that
names the option (a seed of -1 or a learning rate of ``inf`` used to fail deep inside numpy or train a NaN model)."""

from __future__ import annotations

import math
from typing import Any

from speechprune.errors import SpeechpruneError

MAX_SEED = 2**32 - 1  # numpy's legacy seeding (used by accelerate's set_seed) takes 0 .. 2**32 - 1


def check_seed(seed: Any, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise SpeechpruneError(f"{name} must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return seed


def check_finite(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` is a finite number inside the given bounds (closed unless ``*_open``)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise SpeechpruneError(f"{name} must be a number, got {value!r}") from None
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high if high_open else x <= high
    if not ok:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f" in {lo or '(-inf'}, {hi or 'inf)'}" if (low is not None or high is not None) else ""
        raise SpeechpruneError(f"{name} must be a finite number{where}, got {value!r}")
    return x


def check_fraction(value: Any, name: str) -> float:
    """A share strictly between 0 and 1 (a split fraction)."""
    return check_finite(value, name, low=0.0, high=1.0, low_open=True, high_open=True)
