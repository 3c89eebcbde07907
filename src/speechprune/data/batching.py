"""Batches of decoded clips, optionally decoded on a background thread while the model runs.

Decoding (libsndfile) and resampling (soxr) release the GIL, so a single helper thread overlaps them with the
model's forward pass at no extra memory cost beyond ``prefetch`` batches. Order is always preserved: batch
``k`` holds exactly the indices ``indices[k*batch_size:(k+1)*batch_size]``, because feature caches and label
arrays are aligned by position.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from speechprune.data.types import AudioDataset
from speechprune.errors import DataError

__all__ = ["iter_batches"]

Batch = tuple[list[int], list[np.ndarray]]
_DONE = object()


def _plan(ds: AudioDataset, batch_size: int, indices: Sequence[int] | None) -> list[list[int]]:
    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    idx = list(range(len(ds))) if indices is None else [int(i) for i in indices]
    n = len(ds)
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise DataError(f"{ds.name}: index {bad[0]} is out of range for {n} items")
    return [idx[k : k + batch_size] for k in range(0, len(idx), batch_size)]


def _decode(ds: AudioDataset, batch: list[int]) -> Batch:
    return batch, [ds.load_audio(i) for i in batch]


def iter_batches(
    ds: AudioDataset,
    batch_size: int,
    indices: Sequence[int] | None = None,
    prefetch: int = 2,
) -> Iterator[Batch]:
    """Yield ``(indices, waveforms)`` batches of float32 mono 16 kHz clips, in order.

    ``prefetch`` > 0 decodes up to that many batches ahead on a daemon thread; 0 decodes in the caller's
    thread (simplest to debug). An error while decoding (e.g. :class:`~speechprune.errors.AudioError`) is
    raised in the caller at the batch where it happened. Leaving the loop early stops the thread. Bad
    arguments raise :class:`DataError` at the call, not at the first batch.
    """
    plan = _plan(ds, batch_size, indices)
    return _serial(ds, plan) if prefetch <= 0 else _prefetched(ds, plan, prefetch)


def _serial(ds: AudioDataset, plan: list[list[int]]) -> Iterator[Batch]:
    for b in plan:
        yield _decode(ds, b)


def _prefetched(ds: AudioDataset, plan: list[list[int]], prefetch: int) -> Iterator[Batch]:
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
                if stop.is_set() or not put(_decode(ds, b)):
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
