"""Batch iteration: order, index subsets, background decoding, error propagation, early exit."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from speechprune.data.batching import iter_batches
from speechprune.data.types import AudioDataset, AudioItem
from speechprune.errors import AudioError, DataError


def _ds(n: int, bad: int | None = None) -> AudioDataset:
    items = []
    for i in range(n):
        x = np.full(160 + i, i / 100, dtype=np.float32)  # value and length encode the index
        if i == bad:
            x[3] = np.nan
        items.append(AudioItem(key=f"clip{i}", labels={"y": str(i % 2)}, array=x, sampling_rate=16000))
    return AudioDataset(items, ["y"], None, "toy")


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_batches_preserve_order(prefetch: int) -> None:
    ds = _ds(11)
    got = list(iter_batches(ds, 4, prefetch=prefetch))
    assert [b for b, _ in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    for idx, waves in got:
        for i, w in zip(idx, waves):
            assert len(w) == 160 + i and w[0] == pytest.approx(i / 100)
    sub = [9, 2, 5]
    got = list(iter_batches(ds, 2, indices=sub, prefetch=prefetch))
    assert [b for b, _ in got] == [[9, 2], [5]]
    assert [len(w) for _, ws in got for w in ws] == [169, 162, 165]


def test_decoding_error_surfaces_at_its_batch() -> None:
    seen = []
    with pytest.raises(AudioError, match="clip5"):
        for idx, _ in iter_batches(_ds(8, bad=5), 2, prefetch=2):
            seen.append(idx)
    assert seen == [[0, 1], [2, 3]]


def test_early_exit_stops_the_background_thread() -> None:
    before = threading.active_count()
    it = iter_batches(_ds(50), 1, prefetch=2)
    next(it)
    it.close()
    deadline = time.time() + 2
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="batch_size"):
        iter_batches(_ds(3), 0)  # raised at the call, before iteration
    with pytest.raises(DataError, match="index 7 is out of range"):
        iter_batches(_ds(3), 2, indices=[0, 7])


def test_length_sorted_plan_and_header_lengths(tmp_path) -> None:
    import soundfile as sf

    from speechprune.data.batching import clip_lengths, length_sorted_batches

    assert length_sorted_batches([5, 9, 5, 1, 9], 2) == [[1, 4], [0, 2], [3]]  # longest first, ties in order
    with pytest.raises(DataError, match="batch_size"):
        length_sorted_batches([1], 0)
    sf.write(tmp_path / "a.wav", np.zeros(8000, np.float32), 8000)  # 1 s at 8 kHz = 16000 samples at 16 kHz
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    items = [AudioItem("a", {}, path=tmp_path / "a.wav"), AudioItem("b", {}, path=tmp_path / "bad.wav"),
             AudioItem("c", {}, array=np.zeros((2, 4410), np.float32), sampling_rate=44100),  # channels first
             AudioItem("d", {}, array=np.zeros(700, np.float32), sampling_rate=16000)]
    assert clip_lengths(AudioDataset(items, [])).tolist() == [16000, 0, 1600, 700]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_explicit_plan_and_transform_on_the_decoding_thread(prefetch: int) -> None:
    threads = []

    def transform(waves):
        threads.append(threading.current_thread().name)
        return [len(w) for w in waves]

    got = list(iter_batches(_ds(6), 0, prefetch=prefetch, batches=[[5, 1], [0], [2, 3, 4]], transform=transform))
    assert got == [([5, 1], [165, 161]), ([0], [160]), ([2, 3, 4], [162, 163, 164])]
    assert set(threads) == ({"speechprune-decode"} if prefetch else {threading.current_thread().name})
    with pytest.raises(DataError, match="either indices or batches"):
        iter_batches(_ds(3), 1, indices=[0], batches=[[0]])
    with pytest.raises(DataError, match="index 9 is out of range"):
        iter_batches(_ds(3), 1, batches=[[0], [9]])
