"""Device handling on a CPU-only machine (issue 12): one home for ``--device`` (auto | cpu | cuda | cuda:N),
a clear one-line error for CUDA without CUDA in every command, TF32 where a CUDA device is resolved, bf16 weights,
the ``run`` config's ``device`` key, and one test per CUDA crash of the issue that reproduces it on the CPU.

How a CUDA crash is reproduced without a GPU: a second device that, like CUDA, refuses to mix its tensors with CPU
tensors in one op — ``meta`` (shapes only) where the code under test is data-independent, or torch's lazy
TorchScript backend (``second_device`` in conftest; computes real values) where it needs data (``nonzero``). Each
test failed on main before the fix (noted per test). The real-GPU flows are in test_cuda.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from speechprune.cli.app import app
from speechprune.errors import SpeechpruneError
from speechprune.utils import device as device_mod
from speechprune.utils.device import DeviceError, check_device, resolve_device

runner = CliRunner()
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for CUDA on a machine without it")


def _audiofolder(folder: Path, n: int = 24) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file_name,word,speaker,split"]
    t = np.arange(8000) / 16000
    for i in range(n):
        x = 0.5 * np.sin(2 * np.pi * [300, 1200][i % 2] * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(folder / f"c{i}.wav", x.astype(np.float32), 16000)
        rows.append(f"c{i}.wav,w{i % 2},s{i % 4},{'test' if i % 4 == 3 else 'train'}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return folder


# --- resolution ----------------------------------------------------------------------------------------------


def test_resolve_device_names() -> None:
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == torch.device("cpu") and check_device(" Auto ") == "auto"
    for bad in ("gpu", "cuda:x", "mps"):
        with pytest.raises(DeviceError, match="auto .*cpu .*cuda"):
            resolve_device(bad)


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_a_clear_error(name: str) -> None:
    with pytest.raises(DeviceError, match=r"torch.cuda.is_available\(\) is False.*--device cpu"):
        resolve_device(name)


def test_cuda_device_enables_tf32_and_checks_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolving a CUDA device switches the CUDA backends to TF32 (not the CPU's oneDNN); checked by pretending a
    one-GPU machine (nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    cpu_before = torch.backends.mkldnn.matmul.fp32_precision
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        assert resolve_device("auto") == torch.device("cuda")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.mkldnn.matmul.fp32_precision == cpu_before
        torch.backends.cuda.matmul.allow_tf32 = False
        monkeypatch.setenv("SPEECHPRUNE_TF32", "0")
        resolve_device("cuda:0")
        assert not torch.backends.cuda.matmul.allow_tf32
        with pytest.raises(DeviceError, match="only 1 CUDA device"):
            resolve_device("cuda:1")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@no_cuda
def test_train_config_accepts_cuda_n_and_rejects_it_clearly_without_cuda() -> None:
    """main: TrainConfig knew only auto/cpu/cuda (no cuda:N) and accepted cuda on a CPU-only machine."""
    from speechprune.train.loop import TrainConfig

    assert TrainConfig(device="Auto").validate().device == "auto"
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="is_available"):
            TrainConfig(device=name).validate()


@no_cuda
def test_every_command_refuses_cuda_without_cuda_in_one_line(tmp_path: Path) -> None:
    """``--device cuda`` without CUDA: a DeviceError before any model loads (the CLI prints it as one line and
    exits 2, see the next test), for every command that computes."""
    data = _audiofolder(tmp_path / "data", 4)
    m, d = "tiny:wav2vec2", str(data)
    calls = {
        "extract": ["extract", m, d, "--device", "cuda"],
        "analyze": ["analyze", m, d, "-l", "word", "--device", "cuda", "-o", str(tmp_path / "an")],
        "finetune": ["finetune", m, d, "-l", "word", "--device", "cuda", "-o", str(tmp_path / "ft")],
        "evaluate": ["evaluate", m, d, "-l", "word", "--device", "cuda:0"],
        "prune layers": ["prune", "layers", m, "--keep", "1", "--device", "cuda", "-o", str(tmp_path / "pl")],
        "prune structured": ["prune", "structured", m, d, "-l", "word", "--device", "cuda", "-o", str(tmp_path / "ps")],
        "distill": ["distill", m, d, "-l", "word", "--device", "cuda", "-o", str(tmp_path / "ds")],
        "profile": ["profile", m, "--device", "cuda"],
        "demo": ["demo", "--device", "cuda", "--out", str(tmp_path / "demo")],
        "run": ["run", f"model={m}", f"data={d}", "label=word", "device=cuda", f"out={tmp_path / 'run'}"],
    }
    for name, args in calls.items():
        res = runner.invoke(app, args)
        assert isinstance(res.exception, SpeechpruneError), (name, res.output, repr(res.exception))
        assert "torch.cuda.is_available() is False" in str(res.exception), name
    assert not (tmp_path / "demo").exists()  # nothing was started


@no_cuda
def test_cli_cuda_error_is_one_line_with_exit_code_2(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from speechprune.cli.app import main

    monkeypatch.setattr(sys, "argv", ["speechprune", "profile", "tiny:wav2vec2", "--device", "cuda"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: device 'cuda' asked for"), lines


def test_run_config_has_a_device_key(tmp_path: Path) -> None:
    """main: ``device`` was an unknown key of the run config."""
    from speechprune.pipeline import load_run_config
    from speechprune.pipeline.config import ConfigError
    from speechprune.pipeline.runner import Run

    data = _audiofolder(tmp_path / "data", 4)
    base = [f"data={data}", "model=tiny:wav2vec2", "label=word"]
    assert load_run_config(None, base).device == "auto"
    cfg = load_run_config(None, [*base, "device=CPU"])
    run = Run(cfg, progress=False, log=lambda _m: None)
    assert cfg.device == "cpu" and run.device == torch.device("cpu") and run.train_config().device == "cpu"
    with pytest.raises(ConfigError, match="device: unknown device 'gpu'"):
        load_run_config(None, [*base, "device=gpu"])


# --- the crashes of the issue, reproduced on a second device -------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "mean-all", "frames"])
def test_pooling_follows_the_states_device(second_device: torch.device, pooling: str) -> None:
    """Issue row 1 (``extract``/``analyze --device cuda``: einsum of cuda states with a cpu mask). The frame
    lengths come from input preparation, on the CPU. main: "Input tensor is not a lazy tensor" (mean)."""
    from speechprune.features.pooling import pool_states

    gen = torch.Generator().manual_seed(0)
    cpu_states = [torch.randn(2, 5, 3, generator=gen) for _ in range(2)]
    lengths = torch.tensor([3, 5])
    ref = pool_states(cpu_states, lengths, pooling, 50.0)
    got = pool_states([s.to(second_device) for s in cpu_states], lengths, pooling, 50.0)
    assert got.states.device == second_device and got.item_index.device.type == "cpu"
    torch.testing.assert_close(got.states.cpu(), ref.states)
    assert torch.equal(got.item_index, ref.item_index)


def test_structured_kept_units_stay_on_the_masks_device(second_device: torch.device) -> None:
    """Issue row 2 (``prune structured`` on CUDA: ``_kept`` indexed a cpu copy of the mask with cuda indices).
    main: the soft values came back on the CPU (on CUDA, indexing them with cuda indices raised)."""
    from speechprune.compress.structured.prune import _kept

    mask = torch.tensor([0.5, 0.0, 1.0, 0.25], device=second_device)
    idx, scale = _kept(mask, 4)
    assert idx.device == second_device and scale.device == second_device
    assert idx.cpu().tolist() == [0, 2, 3] and scale.cpu().tolist() == [0.5, 1.0, 0.25]
    idx, scale = _kept(None, 3, second_device)
    assert idx.device == scale.device == second_device


@pytest.mark.parametrize("family", ["whisper", "wav2vec2"])
def test_distill_stage1_mse_runs_on_the_students_device(monkeypatch: pytest.MonkeyPatch, family: str) -> None:
    """Issue row 3 (``distill``/``run`` on CUDA: ``x + embed_positions`` with x on the CPU, the table on cuda).
    After training, the stage-1 test MSE fed CPU batches to the student the trainer had moved to the GPU. Here the
    student sits on ``meta``. main: "Tensor on device cpu is not on the expected device meta!"."""
    from speechprune.compress.distill import build_student, student_config
    from speechprune.compress.distill import train as dtrain
    from speechprune.compress.distill.targets import FrameDataset, TeacherTargets
    from speechprune.models import load_encoder
    from speechprune.models.classifier import add_classification_head

    window = {"window_seconds": 0.5} if family == "whisper" else {}
    teacher = add_classification_head(load_encoder(f"tiny:{family}", **window), ["a", "b"])
    student = build_student(teacher, student_config(teacher, "mlp", 8, 1)).to("meta")
    t = 25 if family == "whisper" else 7
    d = teacher.hidden_size
    targets = TeacherTargets(torch.randn(3 * t, d), torch.randn(3 * t, d), None, np.arange(4) * t, None,
                             family == "whisper", {})
    seen: list[torch.device] = []
    real_loss = dtrain.stage1_loss

    def loss_on_host(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = real_loss(model, batch)  # the real forward, on the student's device
        seen.append(loss.device)
        return torch.zeros(()), logits  # a meta loss cannot be read back; the forward is what is checked

    monkeypatch.setattr(dtrain, "stage1_loss", loss_on_host)
    assert dtrain._stage1_mse(student, FrameDataset(targets, [0, 1, 2]), family == "whisper") == 0.0
    assert seen == [torch.device("meta")]


# --- bf16 weights ----------------------------------------------------------------------------------------------


def test_hidden_states_of_a_bf16_model_cast_the_inputs() -> None:
    """``dtype=bf16`` on CUDA = bf16 weights: the encoder feeds bf16 inputs, runs no autocast and returns float32
    states close to the fp32 model's. main: "Input type (float) and bias type (c10::BFloat16) should be the same"."""
    from speechprune.models import load_encoder

    enc = load_encoder("tiny:wav2vec2")
    wav = [np.random.default_rng(0).standard_normal(4000).astype(np.float32)]
    ref = enc.hidden_states(wav)
    enc.model.to(torch.bfloat16)
    got = enc.hidden_states(wav)
    assert all(g.dtype == torch.float32 and g.shape == r.shape for g, r in zip(got, ref))
    rel = [float((g - r).norm() / r.norm()) for g, r in zip(got, ref)]
    assert max(rel) < 0.1, rel
    assert enc.encode(wav).dtype == torch.bfloat16


def test_place_model_casts_to_bf16_only_where_bf16_means_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    from speechprune.utils.device import place_model

    lin = torch.nn.Linear(2, 2)
    assert place_model(lin, "cpu", "bf16").weight.dtype == torch.float32  # CPU: autocast, weights stay fp32
    monkeypatch.setattr(device_mod, "bf16_weights", lambda _d: True)  # what CUDA answers
    assert place_model(lin, "cpu", "bf16").weight.dtype == torch.bfloat16


def test_profile_bf16_on_cuda_times_a_bf16_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """``profile --dtype bf16`` on CUDA times bf16 weights (the issue: autocast was slower than TF32 there); the
    caller's model keeps fp32 weights. The CUDA decision is simulated on the CPU."""
    from speechprune.models import load_encoder
    from speechprune.profile.latency import measure_latency

    model = load_encoder("tiny:wav2vec2").model
    cpu = measure_latency(model, seconds=0.25, repeats=1, warmup=1, dtype="bf16")
    assert cpu["settings"]["bf16"] == "autocast" and cpu["settings"]["tf32"] is False
    monkeypatch.setattr(device_mod, "bf16_weights", lambda _d: True)
    res = measure_latency(model, seconds=0.25, repeats=1, warmup=1, dtype="bf16")
    assert res["settings"]["bf16"] == "weights" and next(model.parameters()).dtype == torch.float32


# --- the GPU benchmark and check script stay runnable ------------------------------------------------------------


@pytest.mark.slow
def test_gpu_extract_benchmark_smoke_run_on_cpu(tmp_path: Path, one_thread: None) -> None:
    """benchmarks/gpu_extract.py --device cpu --tiny: both sides run and the report has the fields the GPU run
    records (numbers on a CPU mean nothing)."""
    import importlib.util
    import json

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gpu_extract", root / "benchmarks" / "gpu_extract.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rep = mod.main(["--device", "cpu", "--tiny", "--dtype", "fp32", "--rounds", "1", "--batches", "1", "--out", str(tmp_path / "r.json")])
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["device"] == "cpu" and saved["ratio_speechprune_to_bare"] == rep["ratio_speechprune_to_bare"] > 0
    assert saved["speechprune"]["tflops"] > 0 and saved["bare"]["clips_per_s"] > 0 and saved["tiny_smoke_run"]


def test_gpu_check_script_parses() -> None:
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "gpu-check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_whisper_window_table_follows_the_model() -> None:
    """Found while hunting (not in the issue's table): ``with_window`` built the sliced position table on the CPU
    in fp32, so a Whisper model already on CUDA (the demo, ``window_drift``) or in bf16 got a table on the wrong
    device/dtype. main: the table came back on the CPU."""
    from speechprune.models import load_encoder

    enc = load_encoder("tiny:whisper")
    enc.model.to(device="meta", dtype=torch.bfloat16)
    table = enc.with_window(0.5).encoder_module.embed_positions.weight
    assert table.device.type == "meta" and table.dtype == torch.bfloat16


def test_one_process_can_train_with_different_precisions() -> None:
    """accelerate's global state refused a second Accelerator with another mixed precision (a bf16 fine-tuning then
    a distillation in one Python process failed with "AcceleratorState has already been initialized")."""
    from accelerate import Accelerator

    from speechprune.train.loop import fresh_accelerator_state

    for mp in ("bf16", "no"):
        fresh_accelerator_state(mp, cpu=True)
        assert Accelerator(mixed_precision=mp, cpu=True).mixed_precision == mp
