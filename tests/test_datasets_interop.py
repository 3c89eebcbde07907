"""Hugging Face ``datasets`` in and out: ``save_to_disk`` folders (a ``Dataset`` and a ``DatasetDict`` split with
``FOLDER:SPLIT``), a 44.1 kHz ``Audio`` column, a non-default audio column and ``ClassLabel`` labels flow through
``extract``, ``finetune`` and ``run``; features come back out as a ``datasets`` folder. No torchcodec is needed:
audio is decoded with soundfile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from speechprune.cli.app import app
from speechprune.data.sources import load_data
from speechprune.errors import DataError

datasets = pytest.importorskip("datasets")
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["yes", "no", "up"]


def _clips(folder: Path, n: int = 18, sr: int = 44100) -> tuple[list[str], list[int], list[str]]:
    """``n`` short tones at ``sr`` (44.1 kHz: the loader must resample), one pitch per word, three speakers."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths, words, speakers = [], [], []
    for i in range(n):
        w = i % len(WORDS)
        t = np.arange(int(sr * 0.4)) / sr
        x = 0.3 * np.sin(2 * np.pi * (300 + 250 * w) * t) + 0.01 * rng.standard_normal(t.size)
        p = folder / f"c{i}.wav"
        sf.write(p, x.astype(np.float32), sr, subtype="PCM_16")
        paths.append(str(p))
        words.append(w)
        speakers.append(f"s{(i // 3) % 3}")  # every speaker says every word
    return paths, words, speakers


def _hf(paths: list[str], words: list[int], speakers: list[str], audio_column: str = "audio") -> "datasets.Dataset":
    ds = datasets.Dataset.from_dict({audio_column: paths, "word": words, "speaker": speakers})
    ds = ds.cast_column(audio_column, datasets.Audio(sampling_rate=44100, decode=False))
    return ds.cast_column("word", datasets.ClassLabel(names=WORDS))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hfdata")
    paths, words, speakers = _clips(root / "wav")
    single = _hf(paths, words, speakers, audio_column="speech")
    single.save_to_disk(str(root / "single"))
    full = _hf(paths, words, speakers)
    datasets.DatasetDict(train=full.select(range(12)), test=full.select(range(12, 18))).save_to_disk(
        str(root / "dict"))
    return {"single": root / "single", "dict": root / "dict", "root": root}


def test_save_to_disk_folder_and_split_and_audio_column(saved: dict[str, Path]) -> None:
    ds = load_data(saved["single"], label_columns=["word"], group_column="speaker", audio_column="speech")
    assert len(ds) == 18 and ds.labels("word")[:3] == WORDS  # ClassLabel ints -> names
    assert abs(len(ds.load_audio(0)) - 6400) <= 2  # 0.4 s at 44.1 kHz resampled to 16 kHz
    train = load_data(f"{saved['dict']}:train", label_columns=["word"])
    test = load_data(saved["dict"], label_columns=["word"], split="test")
    assert (len(train), len(test)) == (12, 6)
    assert len(load_data(f"hf:{saved['dict']}:test", label_columns=["word"])) == 6  # hf: + a local folder
    with pytest.raises(DataError, match=r"splits \['train', 'test'\]; name one"):
        load_data(saved["dict"], label_columns=["word"])
    with pytest.raises(DataError, match="no split 'dev'"):
        load_data(f"{saved['dict']}:dev", label_columns=["word"])
    with pytest.raises(DataError, match="no audio column 'audio'"):
        load_data(saved["single"], label_columns=["word"])  # the audio column is 'speech' here
    dd = datasets.load_from_disk(str(saved["dict"]))
    assert len(load_data(dd, label_columns=["word"], split="train")) == 12
    assert len(load_data(dd["test"], label_columns=["word"])) == 6  # the Python form: ds["test"]


def test_manifest_audio_column_default_and_override(tmp_path: Path) -> None:
    paths, words, speakers = _clips(tmp_path / "wav", n=3, sr=16000)
    m = tmp_path / "m.csv"
    m.write_text("audio,word\n" + "".join(f"{p},{WORDS[w]}\n" for p, w in zip(paths, words)))
    assert len(load_data(m, label_columns=["word"])) == 3  # 'path' absent: falls back to 'audio'
    m2 = tmp_path / "m2.csv"
    m2.write_text("wav,word\n" + "".join(f"{p},{WORDS[w]}\n" for p, w in zip(paths, words)))
    assert len(load_data(m2, label_columns=["word"], audio_column="wav")) == 3


def test_extract_reads_a_dataset_split_and_writes_features_as_a_dataset(saved: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "feats"
    res = runner.invoke(app, ["extract", "tiny:wav2vec2", f"{saved['dict']}:train", "-l", "word", "--group",
                              "speaker", "--cache-dir", str(tmp_path / "cache"), "--to-dataset", str(out),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    back = datasets.load_from_disk(str(out))
    assert back.num_rows == 12 and back["word"][:3] == WORDS and back["group"][:6] == ["s0"] * 3 + ["s1"] * 3
    states = sorted(int(c.split("_")[1]) for c in back.column_names if c.startswith("state_"))
    assert states == list(range(len(states))) and len(states) >= 2
    info = json.loads(back.info.description)
    assert info["speechprune_features"] and info["states"] == states
    arr = back.with_format("numpy")[:]["state_0"]
    assert arr.shape[0] == 12 and np.isfinite(arr).all()
    again = runner.invoke(app, ["extract", "tiny:wav2vec2", f"{saved['dict']}:train", "-l", "word",
                                "--cache-dir", str(tmp_path / "cache"), "--to-dataset", str(out), "--no-progress"])
    assert again.exit_code != 0 and "not empty" in str(again.exception)  # never replaces what it did not write unasked


def test_audio_column_flag_flows_through_extract_and_finetune(saved: dict[str, Path], tmp_path: Path) -> None:
    res = runner.invoke(app, ["extract", "tiny:hubert", str(saved["single"]), "--audio-column", "speech", "-l",
                              "word", "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "ft"
    res = runner.invoke(app, ["finetune", "tiny:wav2vec2", str(saved["single"]), "--audio-column", "speech",
                              "-l", "word", "--group", "speaker", "--test-groups", "s2", "--epochs", "1",
                              "-o", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert sorted(cfg["label2id"]) == sorted(WORDS)  # ClassLabel names kept as class names


@pytest.mark.slow
@pytest.mark.parametrize("source, audio", [("dict:train", None), ("single", "speech")])
def test_run_on_a_saved_dataset(saved: dict[str, Path], tmp_path: Path, source: str, audio: str | None) -> None:
    """A DatasetDict split, and a save_to_disk Dataset with a 44.1 kHz, non-default audio column and ClassLabel."""
    from speechprune.pipeline import load_run_config, run_pipeline

    folder, _, split = source.partition(":")
    data = f"{saved[folder]}:{split}" if split else str(saved[folder])
    cfg = load_run_config(None, [*([f"audio_column={audio}"] if audio else []),
        "model=tiny:wav2vec2", f"data={data}", "label=word", "group=speaker",
        "split.test_groups=s2", "train.epochs=1", "analysis.metrics=similarity", "analysis.similarity=cosine,cka",
        "analysis.permutations=1",
        "compress.removal.enabled=false", "compress.truncate.enabled=false", "latency_repeats=1",
        "export.onnx=false", f"out={tmp_path / 'run'}",
    ])
    res = run_pipeline(cfg, progress=False)
    assert res is not None and (tmp_path / "run" / "report.html").is_file()


def test_whisper_full_window_on_short_clips_warns(saved: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    from speechprune.features.window_advice import whisper_window_advice
    from speechprune.models import load_encoder

    ds = load_data(saved["single"], label_columns=["word"], audio_column="speech")
    full = load_encoder("tiny:whisper")
    advice = whisper_window_advice(full, ds)
    assert advice is not None and "--window 1" in advice and f"{full.window_seconds:g} s window" in advice
    assert whisper_window_advice(load_encoder("tiny:whisper", window_seconds=1.0), ds) is None
    assert whisper_window_advice(load_encoder("tiny:wav2vec2"), ds) is None
