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
from speechprune.compress.methods.removal import Removal
from speechprune.pipeline.config import ConfigError
from tests.test_train import tone_dataset

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_audiofolder(tone_dataset(n=45), tmp_path_factory.mktemp("tones") / "data")


def overrides(data: Path, out: Path, *extra: str) -> list[str]:
    return ["model=tiny:wav2vec2", f"data={data}", "label=word", "labels=speaker", "group=speaker",
            "split.test_groups=4", "split.val_fraction=0.3", "train.epochs=2", "train.lr=2e-3", "train.freeze_front_end=false",
            f"out={out}", "latency_repeats=2", "analysis.metrics=similarity,convexity", "analysis.permutations=1",
            "compress.removal.orders=backward,block-influence", "compress.distill.enabled=true",
            "compress.distill.mimickers=mlp:16:1", "compress.distill.stage1_epochs=2",
            "compress.distill.stage2_epochs=2", "export.onnx=false",
            # 12 validation clips would start the cross-validation fallback (4 more fine-tunes per run); these tests
            # are about stages, caching and the report — tests/test_pipeline_discipline.py covers the fallback
            "selection.cv=never", *extra]


@pytest.mark.parametrize("extra, message", [
    (["trian.epochs=2"], "unknown key(s) trian; allowed at top level:"),
    (["train.epoch=2"], "unknown key(s) train.epoch; allowed at train: batch_size"),
    (["train.epochs=two"], "train.epochs must be an integer"),
    (["compress.removal.enabled=maybe"], "compress.removal.enabled must be true or false"),
    (["compress.removal.orders=sideways"], "allowed: backward, forward"),
    (["label=emotion"], "label/column 'emotion' is not in the data"),
    (["data=/nonexistent/folder"], "data: path /nonexistent/folder does not exist"),
    (["selection.cv=sometimes"], "selection.cv must be auto, always or never"),
    (["selection.folds=1"], "selection.folds must be at least 2"),
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


def test_run_accepts_the_analysis_options(data: Path, tmp_path: Path) -> None:
    cfg = load_run_config(None, overrides(data, tmp_path / "o", "analysis.probe_folds=3", "analysis.knn_k=4",
                                          "analysis.convexity_k=6", "analysis.processes=1", "analysis.probe=ridge"))
    a = cfg.analysis
    assert (a.probe_folds, a.knn_k, a.convexity_k, a.processes, a.probe) == (3, 4, 6, 1, "ridge")
    with pytest.raises(ConfigError, match="probe_folds must be at least 2"):
        load_run_config(None, overrides(data, tmp_path / "o", "analysis.probe_folds=1"))
    with pytest.raises(ConfigError, match="analysis.probe must be one of auto, logistic, ridge, got 'svm'"):
        load_run_config(None, overrides(data, tmp_path / "o", "analysis.probe=svm"))
    with pytest.raises(ConfigError, match="analysis.convexity_max_rows must be at least 2"):
        load_run_config(None, overrides(data, tmp_path / "o", "analysis.convexity_max_rows=1"))
    assert load_run_config(None, overrides(data, tmp_path / "o", "analysis.convexity_max_rows=null")
                           ).analysis.convexity_max_rows is None
    with pytest.raises(ConfigError, match="analysis.chance_pairs must be at least 1"):
        load_run_config(None, overrides(data, tmp_path / "o", "analysis.chance_pairs=0"))


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
    assert set(changed["stages_run"]) == {"removal", "evaluate", "profile"}  # the candidates changed

    # crash in the middle (after baseline and truncation), then re-run: finished stages are not redone
    def boom(*_args):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Removal, "run", boom)
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
    assert total >= 5 and done == total, marker  # similarity, layer curves, removal, confusion matrices, Pareto
    assert int(rows.removeprefix("rows=")) >= 3
    # the evidence (issue 14): test n and 95 % intervals in the table, confusion matrices, and a block outline only
    # where the permutation test found blocks (otherwise a note with the p-value)
    text = dom.stdout
    assert "test n" in text and "test accuracy [95 % CI]" in text and " [0." in text
    assert "Confusion matrices per candidate" in text and "How to read this" in text
    blocks = json.loads((tmp_path / "r" / "analysis" / "blocks.json").read_text())
    for name, b in blocks.items():
        if name != "provenance" and not b["has_blocks"]:
            assert f"{name}: no block structure beyond distance decay (p = " in text and "no outline drawn" in text
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,3000", html.as_uri()],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] >= 2000 and img[..., :3].std() > 0.05  # a page with content, not a blank canvas


def test_two_process_accelerate_run_matches_one_process(data: Path, tmp_path: Path) -> None:
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo) runs the whole pipeline: the training stages
    data-parallel (each process takes every other batch of 4, so a step sees the same 8 clips as one process with
    batch 8), the other stages on the main process. Same candidates, same number of updates, metrics within noise
    (each process draws its own dropout/SpecAugment masks)."""
    common = [*overrides(data, tmp_path / "x", "train.epochs=3", "compress.structured.enabled=true",
                         "compress.structured.epochs=2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = ["-m", "speechprune.cli.app", "run"]
    one = subprocess.run([sys.executable, *cli, *common, f"out={tmp_path / 'one'}", "train.batch_size=8",
                          f"cache_dir={tmp_path / 'cache-one'}", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533"]
    two = subprocess.run([*launch, *cli, *common, f"out={tmp_path / 'two'}", "train.batch_size=4",
                          f"cache_dir={tmp_path / 'cache-two'}", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert (two.stdout + two.stderr).count("recommended:") == 1  # one summary, from the main process
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    # the analysis stage's features were extracted by both processes, into the entry one process writes
    fa, fb = (Path(json.loads((tmp_path / r / "analysis" / "metrics.json").read_text())["data"]["features"])
              for r in ("one", "two"))
    assert (fa / "features.safetensors").read_bytes() == (fb / "features.safetensors").read_bytes()
    assert len(json.loads((fb / "run.json").read_text())["batches_per_process"]) == 2
    kinds = lambda r: [c["name"].split("-r")[0] if c["name"].startswith("removal") else c["name"]  # noqa: E731
                       for c in r["candidates"]]  # how many layers removal may drop depends on the baseline
    names = kinds(a)
    assert names == kinds(b)
    assert {"baseline", "distill-mlp-16-1", "structured-macs0.5"} <= set(names)
    ta = json.loads((tmp_path / "one" / "models" / "baseline" / "training.json").read_text())["training"]
    tb = json.loads((tmp_path / "two" / "models" / "baseline" / "training.json").read_text())["training"]
    assert ta["num_processes"] == 1 and tb["num_processes"] == 2
    assert ta["global_step"] == tb["global_step"]
    la, lb = (np.array([h["val_loss"] for h in t["history"]]) for t in (ta, tb))
    assert la[-1] < la[0] and lb[-1] < lb[0]  # both learn
    np.testing.assert_allclose(lb, la, rtol=0.4)
    for ca, cb in zip(a["candidates"], b["candidates"]):
        if ca["name"].startswith("structured"):
            continue  # 2 epochs to half the MACs of a random tiny model leave it near chance either way; see below
        assert abs(ca["accuracy"] - cb["accuracy"]) <= 0.25, (ca["name"], ca["accuracy"], cb["accuracy"])
        if not ca["name"].startswith(("structured", "removal")):  # same architecture, same cost
            assert ca["gmacs_per_s"] == cb["gmacs_per_s"]
    # the structured candidate was trained by both processes and meets the same budget either way
    for run in ("one", "two"):
        (cand,) = json.loads((tmp_path / run / "stages" / "structured.json").read_text())["result"]["candidates"]
        assert cand["budget_met"] and cand["max_abs_budget_error"] <= 0.02


def test_export_stage_adds_onnx_and_int8_rows(data: Path, tmp_path: Path) -> None:
    """Issue 13: with the onnx extra, every candidate gets ONNX fp32 / int8 rows with accuracy on the same test
    clips, size on disk and latency; the recommendation may name a deployable variant."""
    pytest.importorskip("onnxruntime")
    extra = ["export.onnx=true", "analysis.enabled=false", "compress.distill.enabled=false",
             "compress.truncate.enabled=false", "compress.removal.orders=backward", "train.epochs=1"]
    rep = run_pipeline(load_run_config(None, overrides(data, tmp_path / "x", *extra)), progress=False,
                       log=lambda _m: None)
    rows = rep["candidates"]
    torch_rows = [r for r in rows if r["format"] == "torch"]
    for r in torch_rows:
        fp32 = next(v for v in rows if v["name"] == f"{r['name']} · fp32")
        int8 = next(v for v in rows if v["name"] == f"{r['name']} · int8")
        assert fp32["accuracy"] == r["accuracy"] and fp32["top1_agreement"] == 1.0  # same test clips, same answers
        assert int8["size_mb"] < fp32["size_mb"] and int8["latency_ms"] > 0 and r["size_mb"] > 0
        assert (Path(int8["model_dir"])).is_file()
    assert sum(r["recommended"] for r in rows) == 1
    md = (tmp_path / "x" / "report.md").read_text()
    assert "ONNX int8" in md and "size (MB)" in md
    assert json.loads((tmp_path / "x" / "stages" / "export.json").read_text())["result"]["exports"]
