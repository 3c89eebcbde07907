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
