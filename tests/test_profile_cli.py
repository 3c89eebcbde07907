"""``speechprune profile`` through the Typer app (CliRunner, tiny models only)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from speechprune.cli.app import app
from speechprune.errors import SpeechpruneError

runner = CliRunner()


def test_profile_tiny_wav2vec2_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.json"
    res = runner.invoke(app, ["profile", "tiny:wav2vec2", "--json", str(out), "--repeats", "3", "--warmup", "1"])
    assert res.exit_code == 0, res.output
    assert "front_end" in res.output and "median" in res.output
    report = json.loads(out.read_text())
    assert report["model"]["family"] == "wav2vec2"
    assert report["flop_check"]["rel_diff"] == 0
    assert report["latency"]["settings"]["repeats"] == 3
    assert report["macs"]["total"] == sum(report["macs"]["parts"].values())
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temporary file


def test_profile_whisper_without_latency(tmp_path: Path) -> None:
    out = tmp_path / "w.json"
    res = runner.invoke(app, ["profile", "tiny:whisper", "--no-latency", "--no-flop-check", "--seconds", "0.5",
                              "--json", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["latency"] is None and report["flop_check"] is None
    assert report["input"]["frames"] == 150 and report["input"]["windows"] == 1  # tiny:whisper has a 3 s window
    assert any("does not depend on the clip length" in n for n in report["notes"])


def test_help_explains_macs_and_whisper_window() -> None:
    res = runner.invoke(app, ["profile", "--help"], terminal_width=200)
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "1 MAC = one multiply-add = 2 FLOPs" in text
    assert "fixed input window" in text


def test_unknown_config_model_is_a_user_error() -> None:
    res = runner.invoke(app, ["profile", "tiny:bert", "--no-latency"])
    assert res.exit_code != 0
    assert isinstance(res.exception, SpeechpruneError)
