"""Loaders: audiofolder (real fsdd / emodb), CSV and JSONL manifests, Hugging Face datasets, dispatch, writing."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.sources import (
    from_hf_dataset,
    load_audiofolder,
    load_data,
    load_manifest,
    write_audiofolder,
)
from speechprune.data.splits import split_by_column
from speechprune.data.types import AudioDataset, AudioItem
from speechprune.errors import AudioError, DataError

# ------------------------------------------------------------------------------------------------ helpers


def _tone(freq: float, seconds: float = 0.2, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def clips(tmp_path: Path) -> list[dict[str, object]]:
    """Six small WAV files in tmp_path/audio/ with labels; different tones so audio mix-ups are visible."""
    (tmp_path / "audio").mkdir()
    rows = []
    for i in range(6):
        rel = f"audio/c{i}.wav"
        sf.write(tmp_path / rel, _tone(200 + 50 * i), 16000, subtype="PCM_16")
        rows.append({"path": rel, "word": ["yes", "no"][i % 2], "speaker": i // 2, "score": 1.0 * i})
    return rows


def _assert_matches(ds: AudioDataset, rows: list[dict[str, object]], base: Path) -> None:
    assert len(ds) == len(rows)
    for i, (it, row) in enumerate(zip(ds.items, rows)):
        assert it.key == row["path"]
        assert it.labels["word"] == row["word"]
        assert it.labels["speaker"] == str(row["speaker"])
        assert it.group == str(row["speaker"])
        expected, _ = sf.read(base / str(row["path"]), dtype="float32")
        np.testing.assert_array_equal(ds.load_audio(i), expected)


# --------------------------------------------------------------------------------------------- real data


def test_fsdd_loads_with_labels_and_official_split(shared_data: Path) -> None:
    ds = load_audiofolder(shared_data / "fsdd", label_columns=["word", "speaker"], group_column="speaker")
    assert len(ds) == 3000
    assert ds.label_columns == ["word", "speaker"]
    assert len(set(ds.labels("word"))) == 10 and len(set(ds.labels("speaker"))) == 6
    assert Counter(ds.labels("speaker")) == {s: 500 for s in set(ds.labels("speaker"))}
    assert ds.items[0].key.startswith("wav/") and ds.items[0].path.is_file()
    parts = split_by_column(ds, "split")
    assert set(parts) == {"train", "test"}
    assert len(parts["test"]) == 300 and len(parts["train"]) == 2700
    assert {int(it.labels["take"]) for it in parts["test"].items} == set(range(5))
    assert min(int(it.labels["take"]) for it in parts["train"].items) == 5
    # order is metadata row order
    with (shared_data / "fsdd" / "metadata.csv").open() as fh:
        names = [r["file_name"] for r in csv.DictReader(fh)]
    assert [it.key for it in ds.items] == names


def test_emodb_loads_with_clipped_phone_segments(shared_data: Path) -> None:
    from speechprune.data.segments import find_segment_file, read_lablaut

    folder = shared_data / "emodb"
    ds = load_audiofolder(folder, label_columns=["emotion"], group_column="speaker", segments_dir="lablaut")
    assert len(ds) == 535
    assert len(set(ds.labels("emotion"))) == 7
    assert len({it.group for it in ds.items}) == 10
    assert all(it.segments is not None for it in ds.items)
    # two EmoDB label files (08a01Abxx, 08a01Waxx) hold only a header; every other clip has phones
    unlabelled = [it.key for it in ds.items if not it.segments]
    assert len(unlabelled) <= 5
    for key in unlabelled:
        assert read_lablaut(find_segment_file(folder / "lablaut", Path(key).stem)) == []
    ends = [s.end for it in ds.items for s in it.segments]
    assert max(ends) == pytest.approx(2.0)  # clips were cut to 2.0 s ...
    clipped = 0
    for it in ds.items:
        segs = it.segments
        if not segs:
            continue
        assert segs[0].start == 0.0
        assert all(a.end == pytest.approx(b.start) for a, b in zip(segs, segs[1:]))  # contiguous phones
        assert all(s.end > s.start for s in segs)
        assert segs[-1].end <= 2.0 + 1e-9
        raw = read_lablaut(find_segment_file(folder / "lablaut", Path(it.key).stem))
        if raw[-1].end > 2.0:
            clipped += 1
    assert clipped > 100  # ... while many label files describe the full, longer recording


# ---------------------------------------------------------------------------------------------- manifests


def test_csv_manifest_round_trip(tmp_path: Path, clips: list[dict[str, object]]) -> None:
    m = tmp_path / "manifest.csv"
    with m.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "word", "speaker", "score"])
        w.writeheader()
        w.writerows(clips)
    ds = load_manifest(m, label_columns=["word", "speaker"], group_column="speaker")
    _assert_matches(ds, clips, tmp_path)
    assert ds.label_columns == ["word", "speaker"]
    assert ds.items[3].labels["score"] == "3.0"  # other columns kept as metadata, CSV text verbatim
    # default label columns: every column but the audio one
    assert load_manifest(m).label_columns == ["word", "speaker", "score"]


def test_jsonl_manifest_round_trip_and_base_dir(tmp_path: Path, clips: list[dict[str, object]]) -> None:
    sub = tmp_path / "lists"
    sub.mkdir()
    m = sub / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in clips))
    ds = load_manifest(m, label_columns=["word", "speaker"], group_column="speaker", base_dir=tmp_path)
    _assert_matches(ds, clips, tmp_path)
    assert all(isinstance(v, str) for it in ds.items for v in it.labels.values())
    assert ds.items[3].labels["score"] == "3"  # a JSON number 3.0 is the label "3"
    # without base_dir, relative paths resolve against the manifest's folder, where they do not exist
    with pytest.raises(DataError, match="c0.wav"):
        load_manifest(m, label_columns=["word"])


def test_manifest_errors_name_the_problem(tmp_path: Path, clips: list[dict[str, object]]) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in clips))
    with pytest.raises(DataError, match=r"'emotion'.*available columns: path, word, speaker, score"):
        load_manifest(m, label_columns=["emotion"])
    with pytest.raises(DataError, match="'wav'"):
        load_manifest(m, audio_column="wav")
    with pytest.raises(DataError, match="not found"):
        load_manifest(tmp_path / "absent.csv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(clips[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        load_manifest(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps(clips[0]) + "\n" + json.dumps(clips[0]) + "\n")
    with pytest.raises(DataError, match="listed twice"):
        load_manifest(dup)
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({**clips[0], "word": ""}) + "\n")
    with pytest.raises(DataError, match="empty value in column 'word'"):
        load_manifest(blank, label_columns=["word"])


# ------------------------------------------------------------------------------------------- audiofolder


def _write_folder(folder: Path, rows: list[dict[str, object]], src: Path) -> None:
    folder.mkdir()
    with (folder / "metadata.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file_name", "word", "speaker"])
        w.writeheader()
        for r in rows:
            w.writerow({"file_name": r["path"], "word": r["word"], "speaker": r["speaker"]})
    shutil.copytree(src / "audio", folder / "audio")  # inside the folder: a symlink out of it is refused


def test_audiofolder_errors(tmp_path: Path, clips: list[dict[str, object]]) -> None:
    folder = tmp_path / "af"
    _write_folder(folder, clips, tmp_path)
    assert len(load_audiofolder(folder)) == 6
    with pytest.raises(DataError, match=r"no column 'emotion'; available columns: file_name, word, speaker"):
        load_audiofolder(folder, label_columns=["word", "emotion"])
    with pytest.raises(DataError, match="'spk'"):
        load_audiofolder(folder, group_column="spk")
    (folder / "audio" / "c4.wav").unlink()
    with pytest.raises(DataError, match=r"1 audio file\(s\) not found: .*c4\.wav"):
        load_audiofolder(folder)
    empty = tmp_path / "no_meta"
    empty.mkdir()
    with pytest.raises(DataError, match="metadata.csv"):
        load_audiofolder(empty)
    with pytest.raises(DataError, match="not found"):
        load_audiofolder(tmp_path / "missing_folder")


def test_write_audiofolder_round_trip(tmp_path: Path) -> None:
    items = [
        AudioItem(key=f"k/{i}.wav", labels={"word": w, "speaker": s, "take": str(i)}, group=s,
                  array=_tone(300 + 40 * i, 0.1, 22050), sampling_rate=22050)
        for i, (w, s) in enumerate([("a", "x"), ("b", "x"), ("a", "y")])
    ]  # fmt: skip
    ds = AudioDataset(items, ["word", "speaker"], "speaker", "mem")
    out = write_audiofolder(ds, tmp_path / "out")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    back = load_audiofolder(out, label_columns=["word", "speaker"], group_column="speaker")
    assert back.labels("word") == ["a", "b", "a"] and [it.group for it in back.items] == ["x", "x", "y"]
    assert [it.labels["take"] for it in back.items] == ["0", "1", "2"]
    for i in range(3):
        info = sf.info(str(back.items[i].path))
        assert info.samplerate == 16000 and info.subtype == "PCM_16" and info.channels == 1
        np.testing.assert_allclose(back.load_audio(i), ds.load_audio(i), atol=1 / 32768 + 1e-6)
    with pytest.raises(DataError, match="already exists"):
        write_audiofolder(ds, out)
    write_audiofolder(ds.subset([0]), out, overwrite=True)
    assert len(load_audiofolder(out)) == 1


# ------------------------------------------------------------------------------------------ HF datasets


def test_hf_dataset_with_audio_paths_bytes_and_classlabel(tmp_path: Path, clips: list[dict[str, object]]) -> None:
    datasets = pytest.importorskip("datasets")
    paths = [str(tmp_path / str(r["path"])) for r in clips]
    hf = datasets.Dataset.from_dict(
        {"audio": paths, "word": [0 if r["word"] == "yes" else 1 for r in clips],
         "speaker": [str(r["speaker"]) for r in clips]}
    ).cast_column("audio", datasets.Audio()).cast_column("word", datasets.ClassLabel(names=["yes", "no"]))  # fmt: skip
    ds = from_hf_dataset(hf, label_columns=["word", "speaker"], group_column="speaker")
    assert [it.key for it in ds.items] == [str(i) for i in range(6)]
    assert ds.labels("word") == [r["word"] for r in clips]  # ClassLabel ints -> names
    assert [it.group for it in ds.items] == [str(r["speaker"]) for r in clips]
    assert all(it.path is not None for it in ds.items)  # file-backed rows stay lazy
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(ds.load_audio(i), sf.read(p, dtype="float32")[0])

    # rows carrying encoded bytes (as from Parquet on the Hub), here 8 kHz, decoded with soundfile
    sf.write(tmp_path / "b8k.wav", _tone(440, 0.5, 8000), 8000, subtype="PCM_16")
    hb = datasets.Dataset.from_dict(
        {"audio": [{"bytes": (tmp_path / "b8k.wav").read_bytes(), "path": None}], "word": ["hi"]}
    ).cast_column("audio", datasets.Audio())
    db = from_hf_dataset(hb)
    assert db.items[0].array is not None and db.items[0].sampling_rate == 16000
    assert abs(len(db.load_audio(0)) - 8000) <= 2

    with pytest.raises(DataError, match=r"'label'.*available columns: audio, word, speaker"):
        from_hf_dataset(hf, label_columns=["label"])
    corrupt = datasets.Dataset.from_dict({"audio": [{"bytes": b"garbage-bytes", "path": "x.wav"}], "w": ["a"]})
    with pytest.raises(AudioError, match="x.wav"):
        from_hf_dataset(corrupt.cast_column("audio", datasets.Audio()))


def test_load_data_dispatch(tmp_path: Path, clips: list[dict[str, object]], monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "af"
    _write_folder(folder, clips, tmp_path)
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in clips))
    assert load_data(folder, label_columns=["word"]).name == "af"
    assert load_data(str(m), label_columns=["word"], group_column="speaker").items[0].group == "0"
    hf = datasets.Dataset.from_dict({"audio": [str(tmp_path / "audio/c0.wav")], "word": ["yes"]})
    assert load_data(hf, label_columns=["word"]).labels("word") == ["yes"]

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.DatasetDict({"train": hf}) if split is None else hf

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    load_data("hf:org/set")
    load_data("hf:org/set:test")
    load_data("hf:org/set:clean")
    load_data("hf:org/set:clean:validation")
    load_data("hf:org/set::train[:10]")
    assert calls == [
        ("org/set", None, None), ("org/set", None, "test"), ("org/set", "clean", None),
        ("org/set", "clean", "validation"), ("org/set", None, "train[:10]"),
    ]  # fmt: skip
    with pytest.raises(DataError, match="not found"):
        load_data(tmp_path / "nothing_here")
