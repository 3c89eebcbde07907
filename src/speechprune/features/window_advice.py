"""Warn when Whisper would encode a 30 s window for clips that are a few seconds long.

Whisper's encoder always sees its full window (30 s, 1500 frames): a 1 s keyword clip costs as much as 30 s of
speech, so extracting FSDD with the stock window runs ~20× slower than with ``--window 1``. Nothing in the
numbers shows this, so we say it before the long job starts. The advice is only a warning: the shorter window
changes the representations a little (``speechprune demo`` measures the drift), which a user may not want.
"""

from __future__ import annotations

import math
from typing import Any

from speechprune.utils.verbosity import get_logger

__all__ = ["clip_seconds", "whisper_window_advice", "warn_if_window_too_long"]

#: Warn when the window is at least this many times the longest clip.
RATIO = 3.0


def clip_seconds(dataset: Any, limit: int = 200) -> list[float]:
    """Durations of up to ``limit`` clips, from file headers (no decoding) or in-memory arrays."""
    from speechprune.data.cliplen import clip_samples
    from speechprune.data.types import TARGET_SAMPLING_RATE

    lengths = (clip_samples(item) for item in dataset.items[:limit])
    return [n / TARGET_SAMPLING_RATE for n in lengths if n is not None]


def whisper_window_advice(encoder: Any, dataset: Any) -> str | None:
    """The warning text, or None when the encoder is no Whisper or its window fits the clips."""
    window = getattr(encoder, "window_seconds", None)
    if not getattr(encoder, "has_fixed_window", False) or not window:
        return None
    seconds = clip_seconds(dataset)
    if not seconds:
        return None
    longest = max(seconds)
    suggest = max(1, math.ceil(longest))
    if window < RATIO * suggest:
        return None
    return (f"Whisper encodes a {window:g} s window for every clip, but the longest of {len(seconds)} clips "
            f"checked is {longest:.1f} s: --window {suggest} would cost about {window / suggest:.0f}x less compute "
            f"(the states drift a little from the full window; `speechprune demo` measures by how much)")


def warn_if_window_too_long(encoder: Any, dataset: Any) -> None:
    message = whisper_window_advice(encoder, dataset)
    if message:
        get_logger("features").warning("warning: " + message)
