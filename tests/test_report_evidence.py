"""The report shows the evidence: the chance guard stops a recommendation from a model at chance (and says why),
and unsignificant blocks are not outlined."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from speechprune.analysis.blocks import find_blocks
from speechprune.analysis.plots import _positions
from speechprune.data.sources import write_audiofolder
from speechprune.data.synth import synthesize_words
from speechprune.pipeline import load_run_config, run_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")



def test_blocks_are_outlined_only_when_significant() -> None:
    rng = np.random.default_rng(0)
    smooth = np.array([[np.exp(-abs(i - j) / 3) for j in range(8)] for i in range(8)])
    noisy = smooth + 0.01 * rng.standard_normal((8, 8))
    res = find_blocks((noisy + noisy.T) / 2, list(range(8)), seed=0)
    assert not res.has_blocks and _positions(res, list(range(8))) == []
    two = np.kron(np.array([[1.0, 0.2], [0.2, 1.0]]), np.ones((4, 4))) + 0.01 * rng.standard_normal((8, 8))
    sig = find_blocks((two + two.T) / 2, list(range(8)), seed=0)
    assert sig.has_blocks and _positions(sig, list(range(8))) == [(0, 3), (4, 7)]


@pytest.mark.slow
def test_a_model_at_chance_gets_no_recommendation_and_the_report_says_why(tmp_path: Path) -> None:
    """The demo's shape (Whisper, spoken words, speakers as groups) with random weights that barely train: the
    unpruned model is at chance (on validation, or in the cross-validation that replaces a too-small one), so
    nothing is recommended, loudly."""
    data = write_audiofolder(synthesize_words(words=("yes", "no", "up", "down"), speakers=4, takes=2),
                             tmp_path / "data")
    out = tmp_path / "run"
    cfg = load_run_config(None, [
        "model=tiny:whisper", f"data={data}", "label=word", "group=speaker", "split.test_groups=s03",
        "split.val_fraction=0.3", "train.epochs=1", "train.lr=1e-9", "train.head_lr=1e-9", f"out={out}",
        "latency_repeats=0", "analysis.enabled=false", "compress.truncate.enabled=false",
        "compress.removal.orders=backward", "compress.removal.min_retained=0.5"])
    res = run_pipeline(cfg, progress=False, log=lambda _m: None)
    assert not any(c["recommended"] for c in res["candidates"])
    assert res["warnings"][0].startswith("NO RECOMMENDATION — the unpruned model is not above chance")
    md = (out / "report.md").read_text()
    # 8 validation clips (< 30): the guard runs on the fold baselines' out-of-fold predictions (3 speakers, 24 clips)
    assert "**No model is recommended**" in md and "not above chance in cross-validation over the training pool" in md
    assert res["evidence"]["chance_guard"]["n"] == 24 and res["evidence"]["crossval"]["folds"] == 3
    assert "NO RECOMMENDATION" in (out / "report.html").read_text()
    # the evidence is there all the same: intervals, n, confusion matrices, per-clip predictions, provenance
    assert "test n" in md and "[0." in md and (out / "confusion.png").stat().st_size > 1000
    assert (out / "predictions" / "baseline.csv").read_text().startswith("split,index,key,group,true,predicted")
    results = json.loads((out / "results.json").read_text())
    prov = results["provenance"]
    assert prov["seed"] == 0 and prov["config"]["label"] == "word" and "torch" in prov["versions"]
    assert "git_commit" in prov and prov["device"] == "cpu"
