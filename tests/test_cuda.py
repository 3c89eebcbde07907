"""Every computing command on CUDA (issue 12), end to end through the CLI on tiny models and a small audiofolder:
extract, analyze, finetune (bf16 mixed precision), evaluate, prune layers (by convexity and without retraining),
prune structured (Whisper and wav2vec2), distill, run with ``device=cuda``, profile fp32/bf16, demo's extraction
path. Runs only where ``torch.cuda.is_available()``; CI is CPU-only, so there the module is skipped with a message,
and the CPU reproductions of each CUDA bug are in test_devices.py. On a GPU machine:

    python -m pytest -q -m cuda tests/test_cuda.py

The real-model, real-data version of these steps with timings is ``benchmarks/gpu/gpu-check.sh``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from speechprune.cli.app import app

#: The device the flows run on. SPEECHPRUNE_TEST_DEVICE=cpu dry-runs the same flows on the CPU (to check the
#: module itself where no GPU is available); the CUDA-only assertions then follow the device.
DEV = os.environ.get("SPEECHPRUNE_TEST_DEVICE", "cuda")
CUDA = DEV.startswith("cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(CUDA and not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is False here); the CPU reproductions of "
                              "the CUDA bugs are in tests/test_devices.py"),
]
runner = CliRunner()


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, [str(a) for a in args], terminal_width=200)
    assert res.exit_code == 0, f"{' '.join(map(str, args))}\n{res.output}\n{res.exception!r}"
    return res.output


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from speechprune.data.sources import write_audiofolder
    from speechprune.data.types import AudioDataset, AudioItem

    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16_000
    items = []
    for i in range(48):
        c = i % 3
        n = int(rng.integers(5600, 8000))  # variable lengths: padding and masks matter
        x = 0.5 * np.sin(2 * np.pi * [300, 900, 2000][c] * t[:n]) + 0.05 * rng.standard_normal(n)
        items.append(AudioItem(key=f"c{i:02d}", labels={"word": f"w{c}", "speaker": str(i % 4),
                                                       "split": "test" if i % 4 == 3 else "train"},
                               group=str(i % 4), array=x.astype(np.float32), sampling_rate=16_000))
    ds = AudioDataset(items, ["word", "speaker", "split"], group_column="speaker", name="cudatones")
    return write_audiofolder(ds, tmp_path_factory.mktemp("cuda") / "data")


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory: pytest.TempPathFactory, data: Path) -> dict[str, Path]:
    """A Whisper and a wav2vec2 classifier fine-tuned on CUDA with bf16 mixed precision (the finetune step)."""
    root = tmp_path_factory.mktemp("cls")
    out = {}
    for family, extra in (("whisper", ["--window", "0.5"]), ("wav2vec2", [])):
        out[family] = root / family
        _ok(["finetune", f"tiny:{family}", data, "-l", "word", "--split-column", "split", "--epochs", "2",
             "--lr", "2e-3", "--device", DEV, "--mixed-precision", "bf16", "-o", out[family], "--no-progress",
             *extra])
        training = json.loads((out[family] / "training.json").read_text())
        assert training["training"]["config"]["mixed_precision"] == "bf16"
    return out


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_extract_and_analyze(data: Path, tmp_path: Path, dtype: str) -> None:
    cache = tmp_path / "cache"
    for pooling in ("mean", "frames"):
        _ok(["extract", "tiny:wav2vec2", data, "-l", "word", "--pooling", pooling, "--dtype", dtype, "--device", DEV,
             "--cache-dir", cache, "--out", tmp_path / pooling, "--no-progress"])
        run = json.loads((tmp_path / pooling / "run.json").read_text())
        assert f'"device": "{DEV.split(":")[0]}"' in json.dumps(run)
    _ok(["analyze", "tiny:whisper", data, "-l", "word", "-l", "speaker", "--split-column", "split", "--window", "0.5",
         "--dtype", dtype, "--device", DEV, "--permutations", "1", "--cache-dir", cache, "-o", tmp_path / "an",
         "--no-progress"])
    assert (tmp_path / "an" / "metrics.json").is_file()


def test_extract_on_cuda_matches_cpu(data: Path, tmp_path: Path) -> None:
    """fp32 on CUDA (TF32 matmuls) stays close to the CPU features."""
    from safetensors.numpy import load_file

    for dev in ("cpu", DEV):
        _ok(["extract", "tiny:wav2vec2", data, "--device", dev, "--cache-dir", tmp_path / "c", "--out", tmp_path / dev,
             "--no-progress"])
    a = load_file(str(tmp_path / "cpu" / "features.safetensors"))["states"]
    b = load_file(str(tmp_path / DEV / "features.safetensors"))["states"]
    assert a.shape == b.shape
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-2


def test_evaluate_and_prune_layers(classifiers: dict[str, Path], data: Path, tmp_path: Path) -> None:
    out = _ok(["evaluate", classifiers["wav2vec2"], data, "-l", "word", "--device", DEV, "--latency-repeats", "3"])
    res = json.loads(out.strip().splitlines()[-1])
    assert res["cost"]["latency_device"].startswith(DEV)
    _ok(["prune", "layers", classifiers["whisper"], "--no-retrain", "--data", data, "-l", "word", "--split-column",
         "split", "--order", "backward,block-influence", "--influence-clips", "10", "--device", DEV, "-o",
         tmp_path / "rm", "--no-progress"])
    _ok(["prune", "layers", "tiny:wav2vec2", "--by", "convexity", "--data", data, "-l", "word", "--device", DEV,
         "-o", tmp_path / "cx", "--no-progress"])


@pytest.mark.parametrize("family", ["whisper", "wav2vec2"])
def test_prune_structured(classifiers: dict[str, Path], data: Path, tmp_path: Path, family: str) -> None:
    _ok(["prune", "structured", classifiers[family], data, "-l", "word", "--split-column", "split", "--budget",
         "macs=0.5", "--epochs", "2", "--finetune-epochs", "1", "--device", DEV, "--mixed-precision", "bf16", "-o",
         tmp_path / "ps", "--no-progress"])
    assert (tmp_path / "ps" / "training.json").is_file()


@pytest.mark.parametrize("family", ["whisper", "wav2vec2"])
def test_distill(classifiers: dict[str, Path], data: Path, tmp_path: Path, family: str) -> None:
    _ok(["distill", classifiers[family], data, "-l", "word", "--split-column", "split", "--hidden", "16", "--blocks",
         "2", "--intermediate", "1", "--stage1-epochs", "2", "--stage2-epochs", "2", "--device", DEV,
         "--cache-dir", tmp_path / "cache", "-o", tmp_path / "ds", "--no-progress"])
    summary = json.loads((tmp_path / "ds" / "distill.json").read_text())
    assert summary["finished"] and summary["stage1"]["test_mse"] is not None


def test_run_with_device_cuda(data: Path, tmp_path: Path) -> None:
    _ok(["run", "model=tiny:whisper", f"data={data}", "label=word", "labels=speaker", "window=0.5", f"device={DEV}",
         "split.split_column=split", "train.epochs=2", "train.lr=2e-3", "train.mixed_precision=bf16",
         "latency_repeats=2", "analysis.permutations=1", "compress.removal.orders=backward,block-influence",
         "compress.distill.enabled=true", "compress.distill.mimickers=mlp:16:1", "compress.distill.stage1_epochs=2",
         "compress.distill.stage2_epochs=2", "compress.structured.enabled=true", "compress.structured.epochs=2",
         "compress.structured.finetune_epochs=1", f"out={tmp_path / 'run'}", "--no-progress"])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"distill", "structured"} <= set(results["stages_run"])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_profile(tmp_path: Path, dtype: str) -> None:
    _ok(["profile", "tiny:wav2vec2", "--seconds", "2", "--batch-size", "4", "--device", DEV, "--dtype", dtype,
         "--repeats", "3", "--json", tmp_path / "p.json"])
    s = json.loads((tmp_path / "p.json").read_text())["latency"]["settings"]
    assert s["device"].startswith(DEV) and s["tf32"] is CUDA
    assert s["bf16"] == (None if dtype == "fp32" else "weights" if CUDA else "autocast")


@pytest.mark.skipif(not CUDA, reason="CUDA only")
def test_cuda_n_and_auto(data: Path, tmp_path: Path) -> None:
    from speechprune.utils.device import resolve_device

    assert resolve_device("auto").type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    last = torch.cuda.device_count() - 1
    _ok(["extract", "tiny:wav2vec2", data, "--device", f"cuda:{last}", "--cache-dir", tmp_path / "c", "--no-progress"])
    _ok(["finetune", "tiny:wav2vec2", data, "-l", "word", "--split-column", "split", "--epochs", "1", "--device",
         f"cuda:{last}", "-o", tmp_path / "ft", "--no-progress"])
