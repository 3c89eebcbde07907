"""Audio decoding, conversion to 16 kHz mono float32, and rejection of bad audio with messages naming the file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.audio import decode_audio, load_item_audio, pcm_to_float, to_mono_16k, validate_audio
from speechprune.data.types import AudioItem
from speechprune.errors import AudioError


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


def test_8khz_int16_file_is_upsampled_and_keeps_its_frequency(tmp_path: Path) -> None:
    p = tmp_path / "tone8k.wav"
    sf.write(p, _sine(440.0, 8000, 1.0), 8000, subtype="PCM_16")
    out = load_item_audio(AudioItem(key="tone8k.wav", path=p))
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 16000) <= 2
    assert abs(_peak_hz(out, 16000) - 440.0) < 2.0
    # amplitude survives the int16 -> float scaling and the resampler (0.5 peak, not 16384)
    assert 0.45 < np.abs(out[1000:-1000]).max() < 0.55


def test_stereo_44k_file_is_averaged_and_downsampled(tmp_path: Path) -> None:
    sr = 44100
    left, right = _sine(1000.0, sr, 0.5, 0.6), _sine(1000.0, sr, 0.5, 0.2)
    p = tmp_path / "stereo.wav"
    sf.write(p, np.stack([left, right], axis=1), sr, subtype="PCM_16")
    raw, raw_sr = decode_audio(p)
    assert raw.shape == (len(left), 2) and raw_sr == sr
    out = load_item_audio(AudioItem(key="stereo", path=p))
    assert abs(len(out) - 8000) <= 2
    assert abs(_peak_hz(out, 16000) - 1000.0) < 3.0
    # the channel mean (0.4), not the first channel (0.6)
    assert 0.37 < np.abs(out[500:-500]).max() < 0.43


def test_high_frequency_is_removed_not_aliased_when_downsampling() -> None:
    x = _sine(11000.0, 44100, 0.5)  # above the 8 kHz Nyquist limit of the 16 kHz output
    out = to_mono_16k(x, 44100)
    assert np.sqrt(np.mean(out[200:-200] ** 2)) < 0.01


def test_in_memory_int16_and_channels_first_arrays() -> None:
    x = (_sine(300.0, 16000, 0.25) * 32767).astype(np.int16)
    out = load_item_audio(AudioItem(key="mem", array=x, sampling_rate=16000))
    np.testing.assert_allclose(out, x / 32768.0, atol=1e-6)
    stereo_cf = np.stack([x, x])  # (channels, frames) as torch/librosa give it
    out2 = to_mono_16k(stereo_cf, 16000)
    assert out2.shape == (len(x),)
    np.testing.assert_allclose(out2, out, atol=1e-6)
    assert pcm_to_float(np.array([0, 128, 255], dtype=np.uint8)).tolist() == pytest.approx([-1.0, 0.0, 127 / 128])


def test_real_fsdd_clip_decodes_at_16k_with_its_listed_duration(shared_data: Path) -> None:
    folder = shared_data / "fsdd"
    with (folder / "metadata.csv").open() as fh:
        row = next(csv.DictReader(fh))
    samples, sr = decode_audio(folder / row["file_name"])
    assert sr == 16000 and samples.ndim == 1
    assert abs(len(samples) / sr - float(row["duration_s"])) < 0.002
    out = load_item_audio(AudioItem(key=row["file_name"], path=folder / row["file_name"]))
    np.testing.assert_array_equal(out, samples)  # already 16 kHz mono: returned untouched


# --------------------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav") as ei:
        load_item_audio(AudioItem(key="k", path=p))
    assert "not found" in str(ei.value)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav") as ei:
        decode_audio(p)
    assert "0 bytes" in str(ei.value)


def test_corrupt_file(tmp_path: Path) -> None:
    p = tmp_path / "corrupt.wav"
    p.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(200)))
    with pytest.raises(AudioError, match=r"corrupt\.wav") as ei:
        decode_audio(p)
    assert "cannot decode" in str(ei.value)


def test_zero_length_audio(tmp_path: Path) -> None:
    p = tmp_path / "zero.wav"
    sf.write(p, np.zeros(0, dtype=np.float32), 16000)
    assert p.stat().st_size > 0  # a valid header, but no samples
    with pytest.raises(AudioError, match=r"zero\.wav") as ei:
        decode_audio(p)
    assert "zero-length" in str(ei.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_in_a_file(tmp_path: Path, bad: float) -> None:
    x = _sine(200.0, 16000, 0.1)
    x[37] = bad
    p = tmp_path / "nonfinite.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nonfinite\.wav") as ei:
        load_item_audio(AudioItem(key="k", path=p))
    assert "non-finite" in str(ei.value) and "index 37" in str(ei.value)


def test_bad_in_memory_audio_names_the_item() -> None:
    x = np.ones(100, dtype=np.float32)
    x[5] = np.nan
    with pytest.raises(AudioError, match="clip-7"):
        load_item_audio(AudioItem(key="clip-7", array=x, sampling_rate=16000))
    with pytest.raises(AudioError, match="clip-8"):
        load_item_audio(AudioItem(key="clip-8", array=np.zeros(0, np.float32), sampling_rate=16000))
    with pytest.raises(AudioError, match="clip-9.*sampling_rate"):
        load_item_audio(AudioItem(key="clip-9", array=np.ones(10, np.float32)))
    with pytest.raises(AudioError, match="clip-10"):
        load_item_audio(AudioItem(key="clip-10"))


def test_validate_audio_passes_good_audio_through() -> None:
    x = _sine(100.0, 16000, 0.1)
    assert validate_audio(x, "x") is x
    with pytest.raises(AudioError, match="my-source"):
        validate_audio(np.array([np.nan], dtype=np.float32), "my-source")
