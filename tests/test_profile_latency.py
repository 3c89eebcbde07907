"""Latency statistics and peak-memory measurement on a tiny model (fast; numbers are noisy, only sanity is checked)."""

from __future__ import annotations

import pytest
import torch

from speechprune.errors import SpeechpruneError
from speechprune.profile import build_config_model, measure_latency, profile_model


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return build_config_model("tiny:wav2vec2")


def test_latency_statistics_are_ordered(tiny: torch.nn.Module) -> None:
    threads_before = torch.get_num_threads()
    res = measure_latency(tiny, seconds=1.0, batch_size=4, warmup=1, repeats=7, threads=1)
    assert torch.get_num_threads() == threads_before  # restored
    st = res["ms_per_batch"]
    assert 0 < st["min"] <= st["median"] <= st["p90"] <= st["max"]
    assert st["min"] <= st["mean"] <= st["max"]
    assert len(res["times_ms"]) == 7
    assert res["ms_per_audio_second"]["median"] == pytest.approx(st["median"] / 4)
    assert res["real_time_factor"] == pytest.approx(st["median"] / 4000)
    s = res["settings"]
    assert (s["threads"], s["device"], s["dtype"], s["batch_size"], s["grad_mode"]) == (1, "cpu", "fp32", 4,
                                                                                         "inference_mode")
    assert s["torch_version"] == torch.__version__
    mem = res["memory"]
    assert mem["peak_bytes"] > 0, mem  # 4 × 1 s: the first conv alone writes 4 × 32 × 3199 floats
    assert mem["peak_total_bytes"] >= mem["peak_bytes"]


def test_bf16_and_validation(tiny: torch.nn.Module) -> None:
    res = measure_latency(tiny, seconds=0.5, warmup=0, repeats=2, dtype="bf16")
    assert res["settings"]["dtype"] == "bf16" and len(res["times_ms"]) == 2
    with pytest.raises(SpeechpruneError, match="dtype"):
        measure_latency(tiny, dtype="fp8")
    with pytest.raises(SpeechpruneError, match="repeats"):
        measure_latency(tiny, repeats=0)


def test_whisper_latency_uses_the_window() -> None:
    enc = build_config_model("tiny:whisper")  # 3 s window
    res = measure_latency(enc, seconds=4.0, warmup=0, repeats=2)
    assert res["settings"]["windows"] == 2


def test_profile_model_combines_everything(tiny: torch.nn.Module) -> None:
    rep = profile_model(tiny, seconds=1.0, flop_check=True, warmup=1, repeats=3)
    assert rep["flop_check"]["rel_diff"] == 0
    assert rep["macs"]["total"] == rep["flop_check"]["total"]
    assert sum(rep["params"]["parts"].values()) == rep["params"]["total"]
    assert rep["latency"]["ms_per_batch"]["median"] > 0
    assert rep["model"]["family"] == "wav2vec2" and rep["input"]["frames"] == 49
    assert profile_model(tiny, latency=False)["latency"] is None
