"""The analyze job end to end on a tiny model and synthetic spoken words: every promised file is written, the
scores are labelled by state, and bad requests fail before any compute."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from speechprune.analysis.runner import AnalysisConfig, run_analysis
from speechprune.data.synth import synthesize_words
from speechprune.errors import SpeechpruneError
from speechprune.models import load_encoder


@pytest.fixture(scope="module")
def words():
    return synthesize_words(words=("yes", "no", "up", "down"), speakers=5, takes=2)


def test_analyze_writes_every_output(tmp_path: Path, words) -> None:
    enc = load_encoder("tiny:wav2vec2")
    cfg = AnalysisConfig(labels=["word", "speaker"], similarity=["cosine", "cka", "mutual_knn"], permutations=1,
                         probe_folds=3, knn_k=5, processes=1)
    res = run_analysis(enc, words, cfg, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    out = tmp_path / "out"
    for name in ("metrics.json", "config.yaml", "blocks.json", "convexity.csv", "probes.csv", "layers.png",
                 "similarity.png", "similarity_cka.csv", "similarity_cka.npy", "similarity_mutual_knn.csv",
                 "similarity_cosine_chance.csv"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["states"] == [0, 1, 2, 3, 4]
    cka = metrics["similarity"]["cka"]["matrix"]
    assert len(cka) == 5 and all(abs(cka[i][i] - 1) < 1e-9 for i in range(5))
    with open(out / "convexity.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["label"] for r in rows} == {"word", "speaker"} and len(rows) == 10
    assert all(0 <= float(r["convexity"]) <= 100 and r["chance"] != "" for r in rows)
    probes = res["probes"]
    # speaker is the group column: it is probed with stratified folds, word with speaker-independent folds
    assert "label = group column" in probes["speaker"][0]["split"]
    assert "group-aware" in probes["word"][0]["split"]
    assert set(res["summary"]) >= {"word", "speaker"}


def test_analyze_bad_requests(tmp_path: Path, words) -> None:
    enc = load_encoder("tiny:wav2vec2")
    with pytest.raises(SpeechpruneError, match="label column.*'emotion'.*available: word, speaker"):
        run_analysis(enc, words, AnalysisConfig(labels=["emotion"]), tmp_path / "o", cache_dir=tmp_path / "c")
    with pytest.raises(SpeechpruneError, match="unknown metric"):
        run_analysis(enc, words, AnalysisConfig(labels=["word"], metrics=["vibes"]), tmp_path / "o")
    with pytest.raises(SpeechpruneError, match="test groups"):
        run_analysis(enc, words, AnalysisConfig(labels=["word"], metrics=["probes"], test_groups=["nobody"]),
                     tmp_path / "o", cache_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("*/shards"))


def test_speaker_label_with_two_clips_per_class_adapts_the_folds(tmp_path: Path) -> None:
    """`analyze -l speaker` where every speaker has 2 clips: folds shrink to 2 (stratified; the label is the group
    column) instead of failing after the work; word (6 per class, 6 speakers) runs its 5 group-aware folds."""
    ds = synthesize_words(words=("yes", "no"), speakers=6, takes=1)
    enc = load_encoder("tiny:wav2vec2")
    cfg = AnalysisConfig(labels=["speaker", "word"], metrics=["probes"], permutations=1, probe_folds=5, processes=1)
    res = run_analysis(enc, ds, cfg, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert res["probes"]["speaker"][0]["split"].startswith("2-fold stratified") and len(res["probes"]["speaker"]) == 5
    assert res["probes"]["word"][0]["n_folds"] == 5


def test_a_label_that_cannot_be_probed_is_skipped_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    import speechprune.features as features

    ds = synthesize_words(words=("yes", "no"), speakers=3, takes=1)
    ds = ds.subset(list(range(len(ds) - 1)))  # the last speaker keeps a single clip
    enc = load_encoder("tiny:wav2vec2")
    cfg = AnalysisConfig(labels=["speaker", "word"], metrics=["probes"], permutations=1, probe_folds=5, processes=1)

    def stop(*_a, **_k):
        raise RuntimeError("feature extraction started")

    monkeypatch.setattr(features, "extract_features", stop)
    with pytest.raises(RuntimeError, match="extraction started"):
        run_analysis(enc, ds, cfg, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    said = " ".join(capsys.readouterr().err.split())
    assert "probes speaker: skipped: class(es) ['s02'] have a single example" in said  # the warning came first
    monkeypatch.undo()
    res = run_analysis(enc, ds, cfg, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert "speaker" not in res["probes"] and "single example" in res["probes_skipped"]["speaker"]
    assert res["probes"]["word"][0]["n_folds"] == 3  # leave-one-speaker-out: 3 speakers
    assert "leave-one-group-out" in res["probes"]["word"][0]["split"]
