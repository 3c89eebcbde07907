"""``speechprune run``: strict config errors in under a second, stage caching and crash recovery, the report (checked
in headless Chromium), and a two-process training run that matches a single-process one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from speechprune.data.sources import write_audiofolder
from speechprune.pipeline import load_run_config, run_pipeline
from speechprune.pipeline import stages as stages_mod
from speechprune.pipeline.config import ConfigError
from tests.test_train import tone_dataset

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_audiofolder(tone_dataset(n=45), tmp_path_factory.mktemp("tones") / "data")


def overrides(data: Path, out: Path, *extra: str) -> list[str]:
    return ["model=tiny:wav2vec2", f"data={data}", "label=word", "labels=speaker", "group=speaker",
            "split.test_groups=4", "train.epochs=2", "train.lr=2e-3", "train.freeze_front_end=false",
            f"out={out}", "latency_repeats=2", "analysis.metrics=similarity,convexity", "analysis.permutations=1",
            "compress.removal.orders=backward,block-influence", "compress.distill.enabled=true",
            "compress.distill.mimickers=mlp:16:1", "compress.distill.stage1_epochs=2",
            "compress.distill.stage2_epochs=2", *extra]


@pytest.mark.parametrize("extra, message", [
    (["trian.epochs=2"], "unknown key(s) trian; allowed at top level:"),
    (["train.epoch=2"], "unknown key(s) train.epoch; allowed at train: batch_size"),
    (["train.epochs=two"], "train.epochs must be an integer"),
    (["compress.removal.enabled=maybe"], "compress.removal.enabled must be true or false"),
    (["compress.removal.orders=sideways"], "allowed: backward, forward"),
    (["label=emotion"], "label/column 'emotion' is not in the data"),
    (["data=/nonexistent/folder"], "data: path /nonexistent/folder does not exist"),
])
def test_bad_config_fails_fast_naming_the_key(data: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_run_config(None, overrides(data, tmp_path / "run", *extra))
    assert time.perf_counter() - t0 < 1.0
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()


def test_yaml_file_and_overrides(data: Path, tmp_path: Path) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(f"model: tiny:hubert\ndata: {data}\nlabel: word\ntrain:\n  epochs: 7\n  lr: 1.0e-4\n")
    cfg = load_run_config(cfg_file, ["train.epochs=3", "compress.truncate.tolerance=2"])
    assert (cfg.model, cfg.train.epochs, cfg.train.lr, cfg.compress.truncate.tolerance) == ("tiny:hubert", 3, 1e-4, 2.0)
    cfg_file.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(cfg_file)


def test_run_caches_stages_and_recovers_from_a_crash(data: Path, tmp_path: Path, monkeypatch) -> None:
    quiet = lambda _m: None  # noqa: E731
    full = run_pipeline(load_run_config(None, overrides(data, tmp_path / "a")), progress=False, log=quiet)
    names = [c["name"] for c in full["candidates"]]
    assert names[0] == "baseline" and any(n.startswith("removal-") or n.startswith("truncate-") for n in names)
    assert "distill-mlp-16-1" in names and sum(c["recommended"] for c in full["candidates"]) == 1
    for f in ("report.html", "report.md", "candidates.csv", "pareto.png", "config.yaml", "results.json"):
        assert (tmp_path / "a" / f).stat().st_size > 100, f
    # a second run reuses every stage and gives the same table
    again = run_pipeline(load_run_config(None, overrides(data, tmp_path / "a")), progress=False, log=quiet)
    assert again["stages_run"] == [] and set(again["stages_reused"]) >= {"analysis", "baseline", "removal", "distill"}
    assert [c["accuracy"] for c in again["candidates"]] == [c["accuracy"] for c in full["candidates"]]
    # changing the removal orders reruns removal (and profile) only
    changed = run_pipeline(load_run_config(None, overrides(data, tmp_path / "a", "compress.removal.orders=backward")),
                           progress=False, log=quiet)
    assert set(changed["stages_run"]) == {"removal", "profile"}

    # crash in the middle (after baseline and truncation), then re-run: finished stages are not redone
    def boom(_run):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(stages_mod, "removal", boom)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_run_config(None, overrides(data, tmp_path / "b")), progress=False, log=quiet)
    monkeypatch.undo()
    resumed = run_pipeline(load_run_config(None, overrides(data, tmp_path / "b")), progress=False, log=quiet)
    assert {"analysis", "baseline", "truncate"} <= set(resumed["stages_reused"])
    assert "baseline" not in resumed["stages_run"]
    acc = lambda r: {c["name"]: c["accuracy"] for c in r["candidates"]}  # noqa: E731
    assert acc(resumed) == acc(full)


def test_report_renders_in_headless_chromium(data: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    run_pipeline(load_run_config(None, overrides(data, tmp_path / "r", "compress.distill.enabled=false")),
                 progress=False, log=lambda _m: None)
    html = tmp_path / "r" / "report.html"
    assert "http://" not in html.read_text() and "https://" not in html.read_text()  # self-contained
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=5000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    marker = dom.stdout.split('data-render-check="', 1)[1].split('"', 1)[0]
    plots, rows = marker.split(";")
    done, total = map(int, plots.removeprefix("plots=").split("/"))
    assert total >= 4 and done == total, marker  # similarity, layer curves, removal, Pareto
    assert int(rows.removeprefix("rows=")) >= 3
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,3000", html.as_uri()],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] >= 2000 and img[..., :3].std() > 0.05  # a page with content, not a blank canvas


def test_two_process_training_matches_one_process(data: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo): each takes every other batch of 4, so one step sees the same 8 clips
    as a single process with batch 8; metrics agree within dropout noise."""
    common = ["finetune", "tiny:wav2vec2", str(data), "-l", "word", "--epochs", "3", "--lr", "2e-3",
              "--no-freeze-front-end", "--group", "speaker", "--test-groups", "4", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "speechprune.cli.app", *common, "--batch-size", "8", "-o",
                          str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29533", "-m", "speechprune.cli.app", *common, "--batch-size", "4", "-o",
                          str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a = json.loads((tmp_path / "one" / "training.json").read_text())
    b = json.loads((tmp_path / "two" / "training.json").read_text())
    assert a["training"]["num_processes"] == 1 and b["training"]["num_processes"] == 2
    assert a["training"]["global_step"] == b["training"]["global_step"]
    la = np.array([h["val_loss"] for h in a["training"]["history"]])
    lb = np.array([h["val_loss"] for h in b["training"]["history"]])
    # both learn; the curves differ by dropout/SpecAugment noise (each process draws its own masks)
    assert la[-1] < la[0] and lb[-1] < lb[0]
    np.testing.assert_allclose(lb, la, rtol=0.4)
    assert abs(a["test"]["accuracy"] - b["test"]["accuracy"]) <= 0.15
    assert abs(a["training"]["best_validation_accuracy"] - b["training"]["best_validation_accuracy"]) <= 0.2
