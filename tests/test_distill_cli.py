"""``speechprune distill`` end to end on a tiny saved teacher and a small audiofolder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from typer.testing import CliRunner

from speechprune.cli.app import app
from speechprune.models import load_encoder
from speechprune.models.classifier import add_classification_head

torch.set_num_threads(1)
runner = CliRunner()


def _audiofolder(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file_name,word,speaker"]
    t = np.arange(8000) / 16000
    for i in range(24):
        x = 0.5 * np.sin(2 * np.pi * [300, 1200][i % 2] * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(folder / f"c{i}.wav", x.astype(np.float32), 16000)
        rows.append(f"c{i}.wav,w{i % 2},s{i % 4}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_distill_cli(tmp_path: Path) -> None:
    data = _audiofolder(tmp_path / "data")
    teacher = add_classification_head(load_encoder("tiny:whisper", window_seconds=0.5), ["w0", "w1"])
    teacher.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "student"
    args = ["distill", str(tmp_path / "teacher"), str(data), "--label", "word", "--mimicker", "mlp", "--hidden", "8",
            "--blocks", "2", "--intermediate", "2", "--stage1-epochs", "2", "--stage2-epochs", "2",
            "--batch-size", "8", "--group", "speaker", "--test-groups", "s3", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    res = runner.invoke(app, args, terminal_width=200)
    assert res.exit_code == 0, res.output + repr(res.exception)
    summary = json.loads((out / "distill.json").read_text())
    assert summary["splits"]["test"] == 6 and summary["student_config"]["mimicker"]["hidden"] == 8
    lat = json.loads((out / "latency.json").read_text())
    assert lat["teacher"]["median_ms"] > 0 and lat["student"]["median_ms"] > 0
    # an existing output is refused; bad sizes are one-line errors
    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "already exists" in str(again.exception)
    bad = runner.invoke(app, [*args[:5], "--hidden", "0", "--out", str(tmp_path / "x"), "--no-progress"])
    assert bad.exit_code != 0 and "hidden size" in str(bad.exception)
    bad = runner.invoke(app, [*args[:5], "--intermediate", "9", "--out", str(tmp_path / "y"), "--no-progress"])
    assert bad.exit_code != 0 and "out of range" in str(bad.exception)
    help_ = runner.invoke(app, ["distill", "--help"], terminal_width=200)
    assert "mimicker" in help_.output and "stage 2" in help_.output.lower()


def test_distill_cli_split_column(tmp_path: Path) -> None:
    """Issue 12: ``--split-column split`` (and a split column recorded in the teacher's training.json) failed with
    "no label column 'split'": only the label column was loaded."""
    data = _audiofolder(tmp_path / "data")
    rows = (data / "metadata.csv").read_text().splitlines()
    (data / "metadata.csv").write_text("\n".join([rows[0] + ",split"] + [
        r + ("," + ("test" if i % 4 == 3 else "train")) for i, r in enumerate(rows[1:])]) + "\n")
    teacher = add_classification_head(load_encoder("tiny:whisper", window_seconds=0.5), ["w0", "w1"])
    teacher.save_pretrained(tmp_path / "teacher")
    common = ["--label", "word", "--hidden", "8", "--blocks", "1", "--stage1-epochs", "1", "--stage2-epochs", "1",
              "--batch-size", "8", "--no-latency", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    res = runner.invoke(app, ["distill", str(tmp_path / "teacher"), str(data), *common, "--split-column", "split",
                              "--out", str(tmp_path / "s1")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert json.loads((tmp_path / "s1" / "distill.json").read_text())["splits"]["test"] == 6
    (tmp_path / "teacher" / "training.json").write_text(json.dumps({"split_spec": {"split_column": "split"}}))
    res = runner.invoke(app, ["distill", str(tmp_path / "teacher"), str(data), *common, "--out", str(tmp_path / "s2")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert json.loads((tmp_path / "s2" / "distill.json").read_text())["splits"]["test"] == 6
