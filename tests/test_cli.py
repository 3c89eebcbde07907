"""Command-line smoke tests: every foundation subcommand runs, writes what it promises, and fails cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from speechprune.cli.app import app

runner = CliRunner()


def test_help_lists_the_subcommands() -> None:
    res = runner.invoke(app, ["--help"], terminal_width=200)
    assert res.exit_code == 0
    for cmd in ("info", "extract", "analyze", "profile", "import-ct2", "demo", "finetune", "evaluate", "run", "distill"):
        assert cmd in res.output


def test_info_json_describes_states() -> None:
    res = runner.invoke(app, ["info", "tiny:wavlm", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["family"] == "wavlm" and info["num_states"] == 5 and len(info["states"]) == 5
    assert info["states"][0].startswith("input to layer 1") and info["states"][4] == "output of layer 4"


def test_info_unsupported_model_is_a_one_line_error() -> None:
    res = runner.invoke(app, ["info", "tiny:conformer"])
    assert res.exit_code != 0
    assert "not supported" in str(res.exception) or "not supported" in res.output


def _audiofolder(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file_name,word,speaker"]
    for i in range(6):
        sf.write(folder / f"c{i}.wav", (0.1 * rng.standard_normal(12000)).astype(np.float32), 16000)
        rows.append(f"c{i}.wav,w{i % 2},s{i % 3}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_extract_writes_cache_and_copy(tmp_path: Path) -> None:
    data = _audiofolder(tmp_path / "data")
    res = runner.invoke(app, ["extract", "tiny:hubert", str(data), "-l", "word", "--group", "speaker",
                              "--layers", "0,2-4", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["layers"] == [0, 2, 3, 4] and meta["labels"]["word"] == ["w0", "w1"] * 3
    res2 = runner.invoke(app, ["extract", "tiny:hubert", str(data), "-l", "nope", "--no-progress",
                               "--cache-dir", str(tmp_path / "cache")])
    assert res2.exit_code != 0 and "nope" in str(res2.exception)


@pytest.mark.real_weights
def test_demo_runs_offline_end_to_end(tmp_path: Path, whisper_tiny_dir: Path) -> None:
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--out", str(out), "--model", str(whisper_tiny_dir), "--speakers", "2",
                              "--takes", "1", "--repeats", "1", "--no-pipeline"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["clips"] == 20 and summary["features"]["states"] == [0, 1, 2, 3, 4]
    drift = summary["window_drift"]["per_state"]
    assert drift[0]["frame_cosine"] > 0.9999 and drift[-1]["frame_cosine"] < drift[0]["frame_cosine"]
    full, short = summary["profile"]["full_window"], summary["profile"]["short_window"]
    assert full["gmacs_per_clip"] > 10 * short["gmacs_per_clip"]
    assert (out / "summary.md").read_text().startswith("# speechprune demo")
