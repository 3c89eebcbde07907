"""YAML config files with command-line overrides, and fast failure on bad configs."""

from __future__ import annotations

import time
from pathlib import Path

from typer.testing import CliRunner

from speechprune.cli.app import app

runner = CliRunner()


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_unknown_key_fails_fast_naming_key_and_allowed(tmp_path: Path) -> None:
    cfg = _write(tmp_path, "batch_size: 4\npoolng: mean\n")
    t = time.perf_counter()
    res = runner.invoke(app, ["analyze", "tiny:wav2vec2", "data", "--config", str(cfg)])
    assert time.perf_counter() - t < 1.0
    assert res.exit_code != 0
    text = " ".join(res.output.split())
    assert "poolng" in text and "pooling" in text and "batch_size" in text


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    cfg = _write(tmp_path, "batch_size: many\n")
    res = runner.invoke(app, ["analyze", "tiny:wav2vec2", "data", "--config", str(cfg)])
    assert res.exit_code != 0 and "batch_size" in res.output


def test_config_values_are_used_and_flags_override(tmp_path: Path, monkeypatch) -> None:
    seen = {}

    def fake_run(enc, ds, cfg, out, **kw):
        seen["cfg"] = cfg
        return {"summary": {}}

    import speechprune.analysis.runner as runner_mod
    import speechprune.data.sources as sources  # the loader that api.analyze, which the command calls, uses

    monkeypatch.setattr(runner_mod, "run_analysis", fake_run)
    monkeypatch.setattr(sources, "load_dataset_spec", lambda *a, **k: object())
    cfg = _write(tmp_path, "batch_size: 3\npermutations: 0\nlabel: [word]\nmetrics: [probes]\n")
    res = runner.invoke(app, ["analyze", "tiny:wav2vec2", "data", "--config", str(cfg), "--permutations", "2",
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    c = seen["cfg"]
    assert (c.batch_size, c.permutations, c.labels, c.metrics) == (3, 2, ["word"], ["probes"])
