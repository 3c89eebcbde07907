"""Batches of decoded clips, optionally decoded (and prepared) on a background thread while the model runs.

Decoding (libsndfile) and resampling (soxr) release the GIL, so a single helper thread overlaps them with the
model's forward pass at no extra memory cost beyond ``prefetch`` batches. Order is always preserved: batch
``k`` holds exactly the indices ``indices[k*batch_size:(k+1)*batch_size]`` (or ``batches[k]`` when an explicit
plan is given), because feature caches and label arrays are aligned by position.

Length bucketing: :func:`length_sorted_batches` plans batches of clips of similar length (longest first), so that
variable-length data pads little; :func:`clip_lengths` estimates every clip's length from file headers without
decoding. Whoever uses such a plan restores the original order afterwards (feature extraction does).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from speechprune.data.types import TARGET_SAMPLING_RATE, AudioDataset, AudioItem
from speechprune.errors import DataError

__all__ = ["clip_lengths", "iter_batches", "length_sorted_batches"]

Batch = tuple[list[int], Any]
_DONE = object()
_MAX_CHANNELS = 8  # as in speechprune.data.audio: a (channels, frames) array has few rows and more columns


def _plan(ds: AudioDataset, batch_size: int, indices: Sequence[int] | None,
          batches: Sequence[Sequence[int]] | None) -> list[list[int]]:
    if batches is not None:
        if indices is not None:
            raise DataError("give either indices or batches, not both")
        plan = [[int(i) for i in b] for b in batches]
        if any(not b for b in plan):
            raise DataError("a planned batch is empty")
        idx = [i for b in plan for i in b]
    else:
        if int(batch_size) < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        idx = list(range(len(ds))) if indices is None else [int(i) for i in indices]
        plan = [idx[k : k + batch_size] for k in range(0, len(idx), batch_size)]
    n = len(ds)
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise DataError(f"{ds.name}: index {bad[0]} is out of range for {n} items")
    return plan


def iter_batches(
    ds: AudioDataset,
    batch_size: int,
    indices: Sequence[int] | None = None,
    prefetch: int = 2,
    *,
    batches: Sequence[Sequence[int]] | None = None,
    transform: Callable[[list[np.ndarray]], Any] | None = None,
) -> Iterator[Batch]:
    """Yield ``(indices, waveforms)`` batches of float32 mono 16 kHz clips, in order.

    ``batches`` replaces the consecutive split of ``indices`` by an explicit plan (e.g.
    :func:`length_sorted_batches`; ``batch_size`` is then ignored). ``transform`` is applied to each batch's
    waveforms on the decoding thread (e.g. padding them into model inputs and pinning them), and its result is
    yielded instead of the waveforms.

    ``prefetch`` > 0 decodes up to that many batches ahead on a daemon thread; 0 decodes in the caller's
    thread (simplest to debug). An error while decoding (e.g. :class:`~speechprune.errors.AudioError`) is
    raised in the caller at the batch where it happened. Leaving the loop early stops the thread. Bad
    arguments raise :class:`DataError` at the call, not at the first batch.
    """
    plan = _plan(ds, batch_size, indices, batches)
    return _serial(ds, plan, transform) if prefetch <= 0 else _prefetched(ds, plan, prefetch, transform)


def _decode(ds: AudioDataset, batch: list[int], transform: Callable[[list[np.ndarray]], Any] | None) -> Batch:
    waves = [ds.load_audio(i) for i in batch]
    return batch, (transform(waves) if transform is not None else waves)


def _serial(ds: AudioDataset, plan: list[list[int]], transform: Any) -> Iterator[Batch]:
    for b in plan:
        yield _decode(ds, b, transform)


def _prefetched(ds: AudioDataset, plan: list[list[int]], prefetch: int, transform: Any) -> Iterator[Batch]:
    q: queue.Queue[object] = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def put(obj: object) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        try:
            for b in plan:
                if stop.is_set() or not put(_decode(ds, b, transform)):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)
            return
        put(_DONE)

    t = threading.Thread(target=worker, name="speechprune-decode", daemon=True)
    t.start()
    try:
        while True:
            obj = q.get()
            if obj is _DONE:
                return
            if isinstance(obj, BaseException):
                raise obj
            yield obj  # type: ignore[misc]
    finally:
        stop.set()
        t.join(timeout=5)


# --- length bucketing --------------------------------------------------------------------------------------------
def clip_lengths(ds: AudioDataset) -> np.ndarray:
    """Each clip's length in samples at 16 kHz, estimated without decoding: from the array's shape, or from the
    file header (frames × 16000 / rate). Deterministic for the same data, which is all a batch plan needs; a file
    whose header cannot be read counts as length 0 (decoding it later raises the proper error)."""
    return np.asarray([_estimated_length(it) for it in ds.items], dtype=np.int64)


def _estimated_length(item: AudioItem) -> int:
    if item.array is not None:
        shape = np.shape(item.array)
        channels_first = len(shape) == 2 and shape[0] <= _MAX_CHANNELS and shape[1] > shape[0]
        frames = shape[1] if channels_first else (shape[0] if shape else 0)
        rate = item.sampling_rate or TARGET_SAMPLING_RATE
    elif item.path is not None:
        import soundfile as sf

        try:
            info = sf.info(str(Path(item.path)))
        except Exception:  # unreadable: leave the error to the decoder, which names the file
            return 0
        frames, rate = info.frames, info.samplerate
    else:
        return 0
    return int(round(frames * TARGET_SAMPLING_RATE / max(int(rate), 1)))


def length_sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[list[int]]:
    """Batches of ``batch_size`` clips of similar length: clips sorted longest first (ties keep their order), then
    cut into consecutive batches. The longest batch comes first, so a batch that does not fit in memory fails at
    once, not at the end."""
    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
