"""Clip lengths checked before any compute, naming the file: a clip shorter than the model's receptive field
(wav2vec2 family: 400 samples = 25 ms) has no output frame, and a batch holding it used to fail with "clip(s) at
batch position [3]" — which says nothing about which file to fix."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from speechprune.data.types import TARGET_SAMPLING_RATE
from speechprune.errors import AudioError


def min_samples(encoder: Any) -> int:
    """Samples (16 kHz) that one output frame of ``encoder`` needs (1 for Whisper, which pads to its window)."""
    return int(getattr(encoder, "receptive_field", 1) or 1)


def clip_samples(item: Any) -> int | None:
    """Length at 16 kHz from the file header (no decoding), or of the in-memory array; ``None`` if unknown."""
    if getattr(item, "array", None) is not None:
        sr = item.sampling_rate or TARGET_SAMPLING_RATE
        return int(math.ceil(len(item.array) * TARGET_SAMPLING_RATE / sr))
    if getattr(item, "path", None) is None:
        return None
    try:
        import soundfile as sf

        info = sf.info(str(item.path))
    except Exception:  # unreadable files are reported by the decoder, with its own message
        return None
    if not info.samplerate:
        return None
    return int(math.ceil(info.frames * TARGET_SAMPLING_RATE / info.samplerate))


def check_min_length(dataset: Any, encoder: Any, indices: Iterable[int] | None = None) -> None:
    need = min_samples(encoder)
    if need <= 1:
        return
    for i in range(len(dataset)) if indices is None else indices:
        item = dataset.items[int(i)]
        n = clip_samples(item)
        if n is not None and n < need:
            where = item.path if item.path is not None else f"{dataset.name}: item {item.key!r}"
            raise AudioError(f"{where}: clip is {1000 * n / TARGET_SAMPLING_RATE:.1f} ms long, shorter than the "
                             f"{1000 * need / TARGET_SAMPLING_RATE:.0f} ms ({need} samples) this model needs for one "
                             "frame; remove the clip or pad it")


#: Longest clip that training and evaluation encode whole (wav2vec2 family; Whisper sees at most its window).
MAX_WHOLE_CLIP_SECONDS = 60.0


def check_max_length(dataset: Any, encoder: Any, indices: Iterable[int] | None = None,
                     max_seconds: float | None = None) -> None:
    """Refuse, before any work, a clip that training or evaluation would encode whole although it is longer than
    :data:`MAX_WHOLE_CLIP_SECONDS` (memory grows with the square of its length) unless ``--max-seconds`` cuts it."""
    if max_seconds is not None or getattr(encoder, "has_fixed_window", False):
        return
    limit = int(MAX_WHOLE_CLIP_SECONDS * TARGET_SAMPLING_RATE)
    for i in range(len(dataset)) if indices is None else indices:
        item = dataset.items[int(i)]
        n = clip_samples(item)
        if n is not None and n > limit:
            where = item.path if item.path is not None else f"{dataset.name}: item {item.key!r}"
            raise AudioError(f"{where}: clip is {n / TARGET_SAMPLING_RATE:.1f} s long, above the "
                             f"{MAX_WHOLE_CLIP_SECONDS:g} s that training and evaluation encode whole (memory grows "
                             "with the square of the length); cut clips with --max-seconds N")
