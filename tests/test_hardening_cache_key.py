"""Issue 15: the feature cache must not return stale labels. Entries are keyed by model + audio (+ segments) +
options; labels and groups are re-attached from the current metadata on every load, so relabelling and analysing
another label column take effect without re-extracting."""

from __future__ import annotations

import json
from pathlib import Path

from _hardening import audiofolder, cli


def test_relabelled_clips_get_their_new_labels_without_re_extraction(tmp_path: Path) -> None:
    from speechprune.data.sources import load_data
    from speechprune.features import extract_features
    from speechprune.models import load_encoder

    data = audiofolder(tmp_path / "data", n=6)
    enc = load_encoder("tiny:wav2vec2")
    first = extract_features(enc, load_data(str(data), ["word"], "speaker"), cache_dir=tmp_path / "c", progress=False)
    assert first.labels["word"] == ["w0", "w1"] * 3
    meta = (data / "metadata.csv").read_text().replace(",w0,", ",z,")  # relabel half of the clips
    (data / "metadata.csv").write_text(meta)
    mtime = (first.path / "features.safetensors").stat().st_mtime_ns
    again = extract_features(enc, load_data(str(data), ["word", "speaker"], "speaker"), cache_dir=tmp_path / "c",
                             progress=False)
    assert again.path == first.path  # same audio: same entry, not re-extracted
    assert (again.path / "features.safetensors").stat().st_mtime_ns == mtime
    assert again.labels["word"] == ["z", "w1"] * 3  # the new labels
    assert again.labels["speaker"] == ["s0", "s1", "s2", "s3", "s0", "s1"]  # a label the first call did not ask for
    assert again.meta["labels_fingerprint"] != first.meta["labels_fingerprint"]


def test_analyze_uses_the_current_labels(tmp_path: Path) -> None:
    data = audiofolder(tmp_path / "data", n=8)
    common = ["-m", "similarity", "--similarity", "cosine", "--permutations", "0", "--no-progress",
              "--cache-dir", str(tmp_path / "c")]
    assert cli("analyze", "tiny:wav2vec2", str(data), "-l", "word", "-o", str(tmp_path / "a1"), *common).code == 0
    res = cli("analyze", "tiny:wav2vec2", str(data), "-l", "speaker", "-o", str(tmp_path / "a2"), *common)
    assert res.code == 0, res.err  # a second label of the same audio: no "no label column 'speaker'"
    feats = json.loads((tmp_path / "a2" / "metrics.json").read_text())["data"]["features"]
    assert Path(feats).parent == tmp_path / "c" / "features" or Path(feats).parent == tmp_path / "c"


def test_extract_out_writes_the_current_labels(tmp_path: Path) -> None:
    data = audiofolder(tmp_path / "data", n=4)
    args = ["extract", "tiny:wav2vec2", str(data), "-l", "word", "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    assert cli(*args).code == 0
    (data / "metadata.csv").write_text((data / "metadata.csv").read_text().replace(",w1,", ",new,"))
    res = cli(*args, "--out", str(tmp_path / "o"))
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["labels"]["word"] == ["w0", "new"] * 2
