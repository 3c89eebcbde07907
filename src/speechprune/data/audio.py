"""Decoding, conversion and validation of audio: everything a model sees is float32 mono at 16 kHz.

Speech encoders (wav2vec2, HuBERT, WavLM, data2vec-audio, Whisper) were all trained on 16 kHz mono input, so
every source is converted here, once, with one resampler (soxr "HQ"), rather than in each loader. Bad audio is
rejected with an :class:`~speechprune.errors.AudioError` that names the file: a corrupt clip in a folder of
thousands must be findable from the message alone, and NaN samples must never reach a model silently (they
turn every downstream statistic into NaN).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from speechprune.errors import AudioError

__all__ = ["TARGET_SAMPLING_RATE", "decode_audio", "to_mono_16k", "load_item_audio", "validate_audio",
           "pcm_to_float"]

#: The one sampling rate every model input has (all supported encoders were trained on 16 kHz).
TARGET_SAMPLING_RATE = 16_000

# Multi-channel arrays are (frames, channels), as soundfile returns them. An array whose first axis is this
# small and whose second is longer is taken to be (channels, frames) instead (torch / librosa convention).
_MAX_CHANNELS = 8


def decode_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read an audio file with soundfile: ``(samples, sampling_rate)``.

    ``samples`` is float32 in [-1, 1] (integer PCM is scaled by soundfile), shaped ``(frames,)`` for mono and
    ``(frames, channels)`` otherwise; it is *not* resampled. Missing, empty (0-byte), unreadable and
    zero-length files raise :class:`AudioError` naming the file; the file's own sample values are checked by
    :func:`validate_audio`.
    """
    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file not found: {p}")
    if not p.is_file():
        raise AudioError(f"audio path is not a file: {p}")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise AudioError(f"cannot access audio file {p}: {exc}") from exc
    if size == 0:
        raise AudioError(f"audio file is empty (0 bytes): {p}")
    try:
        samples, sr = sf.read(str(p), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as exc:
        raise AudioError(f"cannot decode audio file {p}: {exc}") from exc
    if samples.size == 0:
        raise AudioError(f"zero-length audio (no samples) in file {p}")
    return samples, int(sr)


def pcm_to_float(samples: np.ndarray, source_name: str = "audio") -> np.ndarray:
    """Scale integer PCM to float32 in [-1, 1]; float input is only cast to float32.

    Integer arrays come from in-memory sources (e.g. a 16-bit buffer); feeding raw int16 values (±32768) to a
    model would be a silent 30 000x gain error. int64 is rejected because its full-scale value is unknowable.
    """
    a = np.asarray(samples)
    if a.dtype == np.int16:
        return (a.astype(np.float32) / 32768.0).astype(np.float32)
    if a.dtype == np.int32:
        return (a.astype(np.float64) / 2147483648.0).astype(np.float32)
    if a.dtype == np.int8:
        return (a.astype(np.float32) / 128.0).astype(np.float32)
    if a.dtype == np.uint8:  # 8-bit WAV convention: unsigned, 128 = silence
        return ((a.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32, copy=False)
    raise AudioError(
        f"{source_name}: unsupported sample dtype {a.dtype} (expected float, int8, uint8, int16 or int32 PCM)"
    )


def to_mono_16k(samples: np.ndarray, sr: int, source_name: str = "audio") -> np.ndarray:
    """Convert samples at ``sr`` to float32 mono at 16 kHz.

    Channels are averaged (not the first channel kept), so a stereo recording with the talker panned to one
    side is not lost. Resampling uses soxr "HQ", a band-limited resampler: an 8 kHz telephone clip is
    upsampled without imaging, and a 44.1 kHz clip is low-passed before decimation so nothing aliases.
    """
    if sr is None or int(sr) <= 0:
        raise AudioError(f"{source_name}: invalid sampling rate {sr!r}")
    sr = int(sr)
    a = pcm_to_float(samples, source_name)
    if a.ndim == 2:
        if a.shape[0] <= _MAX_CHANNELS and a.shape[1] > a.shape[0]:
            a = a.T  # (channels, frames) -> (frames, channels)
        a = a.mean(axis=1, dtype=np.float64).astype(np.float32) if a.shape[1] > 1 else a[:, 0]
    elif a.ndim != 1:
        raise AudioError(f"{source_name}: expected 1-D (mono) or 2-D (multi-channel) samples, got shape {a.shape}")
    if a.size == 0:
        raise AudioError(f"{source_name}: zero-length audio (no samples)")
    if sr != TARGET_SAMPLING_RATE:
        a = soxr.resample(a, sr, TARGET_SAMPLING_RATE, quality="HQ")
    return np.ascontiguousarray(a, dtype=np.float32)


def validate_audio(samples: np.ndarray, source_name: str) -> np.ndarray:
    """Check that samples are usable and return them unchanged.

    Rejects non-arrays, zero-length audio and NaN/inf samples, naming ``source_name`` (a file path or item
    key) and the first bad sample index, so the offending clip can be found and fixed.
    """
    if not isinstance(samples, np.ndarray):
        raise AudioError(f"{source_name}: audio is a {type(samples).__name__}, not a numpy array")
    if samples.size == 0:
        raise AudioError(f"{source_name}: zero-length audio (no samples)")
    if np.issubdtype(samples.dtype, np.floating):
        finite = np.isfinite(samples)
        if not finite.all():
            bad = np.flatnonzero(~finite.reshape(-1))
            kind = "NaN" if np.isnan(samples.reshape(-1)[bad[0]]) else "infinite"
            raise AudioError(
                f"{source_name}: {bad.size} non-finite sample(s) (first is {kind}, at flat index {int(bad[0])})"
            )
    return samples


def load_item_audio(item: Any) -> np.ndarray:
    """Decode one item (an :class:`~speechprune.data.types.AudioItem`) to validated float32 mono 16 kHz samples.

    Works for file-backed items (``item.path``) and in-memory items (``item.array`` + ``item.sampling_rate``).
    Validation runs both before conversion (so a NaN is reported against the original file) and after (so a
    resampler problem cannot slip through).
    """
    if item.path is not None and item.array is not None:
        raise AudioError(f"item {item.key!r}: has both a path and an in-memory array; exactly one must be set")
    if item.path is not None:
        name = str(item.path)
        samples, sr = decode_audio(item.path)
    elif item.array is not None:
        name = f"item {item.key!r} (in-memory audio)"
        if item.sampling_rate is None:
            raise AudioError(f"{name}: has no sampling_rate")
        samples, sr = np.asarray(item.array), int(item.sampling_rate)
    else:
        raise AudioError(f"item {item.key!r}: has neither a path nor an in-memory array")
    validate_audio(pcm_to_float(samples, name), name)
    out = to_mono_16k(samples, sr, name)
    return validate_audio(out, name)
