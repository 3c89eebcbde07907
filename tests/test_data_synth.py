"""Offline spoken-word synthesis with eSpeak NG: determinism, audio sanity, distinct speakers, writing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from speechprune.data.sources import load_audiofolder
from speechprune.data.synth import (
    VoiceSpec,
    available_voices,
    speaker_voices,
    synthesize,
    synthesize_words,
    trim_silence,
    write_audiofolder,
)
from speechprune.data.types import AudioDataset
from speechprune.errors import DataError

WORDS = ("yes", "no", "stop", "go")


@pytest.fixture(scope="module")
def ds() -> AudioDataset:
    return synthesize_words(WORDS, speakers=4, takes=3, seed=0)


def _f0(x: np.ndarray, sr: int = 16000) -> float:
    """Median autocorrelation pitch (60-400 Hz) over the five loudest 40 ms frames."""
    n = int(0.04 * sr)
    frames = [x[i : i + n] for i in range(0, len(x) - n, n // 2)]
    frames.sort(key=lambda f: -float(np.sum(f**2)))
    est = []
    for f in frames[:5]:
        f = f - f.mean()
        ac = np.correlate(f, f, "full")[n - 1 :]
        lo, hi = sr // 400, sr // 60
        est.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(est))


def _log_spectrum(x: np.ndarray) -> np.ndarray:
    n = 512
    frames = np.stack([x[i : i + n] * np.hanning(n) for i in range(0, len(x) - n, n // 2)])
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)
    return np.log(power + 1e-10)


def test_dataset_shape_labels_and_audio(ds: AudioDataset) -> None:
    assert len(ds) == 4 * len(WORDS) * 3
    assert ds.label_columns == ["word", "speaker"] and ds.group_column == "speaker"
    assert set(ds.labels("word")) == set(WORDS)
    assert sorted(set(ds.labels("speaker"))) == ["s00", "s01", "s02", "s03"]
    assert len({it.key for it in ds.items}) == len(ds)
    for i, it in enumerate(ds.items):
        assert it.group == it.labels["speaker"] and it.sampling_rate == 16000
        x = ds.load_audio(i)
        assert x.dtype == np.float32 and x.ndim == 1
        assert 0.1 < len(x) / 16000 < 1.5
        assert np.sqrt(np.mean(x**2)) > 0.02  # not silent
        assert np.abs(x).max() <= 1.0


def _frame_db(x: np.ndarray, frame: int = 160) -> np.ndarray:
    n = len(x) // frame
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    return 20 * np.log10(rms / rms.max() + 1e-12)


def test_silence_is_trimmed(ds: AudioDataset) -> None:
    # no clip starts or ends with 50 ms of silence (-40 dB below its loudest 10 ms)
    for it in ds.items:
        db = _frame_db(it.array)
        assert db[:5].max() > -40 and db[-5:].max() > -40, it.key
    # trim_silence removes padding added around a word, and keeps the word
    x = synthesize("stop", speaker_voices(1)[0])
    rng = np.random.default_rng(0)
    padded = np.concatenate([np.zeros(4800), x, np.zeros(6400)]).astype(np.float32)
    padded += rng.normal(0, 1e-5, len(padded)).astype(np.float32)
    trimmed = trim_silence(padded, 16000)
    assert abs(len(trimmed) - len(x)) <= 2 * 160 + 2 * 160  # within a frame and the margin each side
    assert np.sum(trimmed**2) > 0.99 * np.sum(padded**2)


def test_synthesis_is_deterministic_and_order_independent(ds: AudioDataset) -> None:
    again = synthesize_words(WORDS, speakers=4, takes=3, seed=0)
    for a, b in zip(ds.items, again.items):
        assert a.key == b.key and a.labels == b.labels
        np.testing.assert_array_equal(a.array, b.array)
    # a clip depends only on its own settings: other words, fewer speakers, reversed order
    part = synthesize_words(("go", "yes"), speakers=2, takes=2, seed=0)
    by_key = {it.key: it.array for it in ds.items}
    for it in part.items:
        np.testing.assert_array_equal(it.array, by_key[it.key])
    other = synthesize_words(("go",), speakers=1, takes=1, seed=1)
    assert not np.array_equal(other.items[0].array, by_key["s00_go_0"])


def test_same_samples_in_a_fresh_process(ds: AudioDataset) -> None:
    code = (
        "import hashlib; from speechprune.data.synth import synthesize_words; "
        "d = synthesize_words(('go',), speakers=2, takes=1, seed=0); "
        "print(hashlib.sha256(d.items[1].array.tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    expected = next(it.array for it in ds.items if it.key == "s01_go_0")
    assert out == hashlib.sha256(expected.tobytes()).hexdigest()


def test_takes_differ(ds: AudioDataset) -> None:
    by_key = {it.key: it.array for it in ds.items}
    for w in WORDS:
        a, b = by_key[f"s00_{w}_0"], by_key[f"s00_{w}_1"]
        assert len(a) != len(b) or not np.allclose(a, b)


def test_speakers_really_differ(ds: AudioDataset) -> None:
    specs = speaker_voices(4, seed=0)
    assert len({s.voice for s in specs}) == 4
    f0 = {s: np.median([_f0(it.array) for it in ds.items if it.labels["speaker"] == s]) for s in ("s00", "s01")}
    assert f0["s01"] > 1.4 * f0["s00"]  # a female and a male voice
    # leave-one-out nearest-centroid speaker identification from the long-term spectrum: for each clip,
    # compare with the other takes of the same word by every speaker
    feats = np.stack([_log_spectrum(it.array) for it in ds.items])
    spk, word = np.array(ds.labels("speaker")), np.array(ds.labels("word"))
    names = sorted(set(spk))
    correct = 0
    for i in range(len(ds)):
        pool = (np.arange(len(ds)) != i) & (word == word[i])
        cents = np.stack([feats[pool & (spk == s)].mean(axis=0) for s in names])
        correct += names[int(np.argmin(((cents - feats[i]) ** 2).sum(axis=1)))] == spk[i]
    assert correct / len(ds) >= 0.9  # chance is 0.25


def test_concurrent_calls_are_safe_and_identical(ds: AudioDataset) -> None:
    results: dict[int, AudioDataset] = {}

    def run(k: int) -> None:
        results[k] = synthesize_words(("stop", "go"), speakers=2, takes=1, seed=0)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_key = {it.key: it.array for it in ds.items}
    for k in range(2):
        for it in results[k].items:
            np.testing.assert_array_equal(it.array, by_key[it.key])


def test_write_audiofolder_round_trip(ds: AudioDataset, tmp_path: Path) -> None:
    small = ds.subset(range(0, len(ds), 5))
    folder = write_audiofolder(small, tmp_path / "words")
    back = load_audiofolder(folder, label_columns=["word", "speaker"], group_column="speaker")
    assert back.labels("word") == small.labels("word")
    assert [it.group for it in back.items] == [it.group for it in small.items]
    assert [it.labels["take"] for it in back.items] == [it.labels["take"] for it in small.items]
    for i in range(len(small)):
        np.testing.assert_allclose(back.load_audio(i), small.load_audio(i), atol=1 / 32768 + 1e-6)


def test_voices_and_errors() -> None:
    voices = available_voices()
    for lang, variant in (("en-us", "f3"), ("en-gb-x-rp", "m1"), ("en", "f2")):
        assert lang in voices["languages"] and variant in voices["variants"]
    with pytest.raises(DataError, match="no voice 'xx-nonexistent'"):
        synthesize("yes", VoiceSpec("xx-nonexistent"))
    with pytest.raises(DataError, match="empty"):
        synthesize_words(("yes", " "))
    with pytest.raises(DataError, match="speaker"):
        synthesize_words(("yes",), speakers=0)
