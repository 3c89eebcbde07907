"""Gated model vs physically pruned model, cost vs profiler, export round trip — every family on tiny configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from speechprune.compress.structured import (
    STRUCTURE_KEY,
    attach_gates,
    gate_name,
    load_pruned,
    save_pruned,
)
from speechprune.errors import SpeechpruneError, UnsupportedModelError
from speechprune.models.tiny import build_model, tiny_config
from speechprune.profile import count_macs, count_params, flop_counter_macs

torch.set_num_threads(1)

ALL = ("conv", "head", "interm", "attlayer", "ffnlayer")
FAMILIES = ["wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper", "wav2vec2-stable", "wavlm-stable"]
NUM_SAMPLES = 8000


def _model(family: str, head: bool = False) -> torch.nn.Module:
    fam = family.removesuffix("-stable")
    cfg = tiny_config(fam, stable_layer_norm=family.endswith("-stable"))
    if head:
        cfg.num_labels = 3
        cls = "WhisperForAudioClassification" if fam == "whisper" else {
            "wav2vec2": "Wav2Vec2", "hubert": "Hubert", "wavlm": "WavLM", "data2vec-audio": "Data2VecAudio",
        }[fam] + "ForSequenceClassification"
        torch.manual_seed(0)
        return getattr(transformers, cls)(cfg).eval()
    model = build_model(cfg)
    return model.get_encoder() if fam == "whisper" else model


def _inputs(model: torch.nn.Module, with_mask: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    if model.config.model_type == "whisper":
        return {"input_features": torch.randn(2, 80, 2 * model.config.max_source_positions, generator=gen)}
    x = {"input_values": torch.randn(2, NUM_SAMPLES, generator=gen)}
    if with_mask:
        mask = torch.ones(2, NUM_SAMPLES, dtype=torch.long)
        mask[1, 5000:] = 0
        x["input_values"][1, 5000:] = 0
        x["attention_mask"] = mask
    return x


def _out(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _set_masks(gated, seed: int = 0) -> None:  # noqa: ANN001
    """Random soft masks plus the hard cases: a layer with no heads, one without FFN, one without attention."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in gated.gates.values():
            gate.log_alpha.copy_(torch.randn(gate.n, generator=gen) * 2.0 + 1.0)
        for name in (gate_name("head", 2), gate_name("interm", 3), gate_name("attlayer", 4), gate_name("ffnlayer", 1)):
            if name in gated.gates:
                gated.gates[name].log_alpha.fill_(-20.0)
        if gate_name("head", 1) in gated.gates:
            gated.gates[gate_name("head", 1)].log_alpha.copy_(torch.tensor([-20.0, 20.0]))
        if gate_name("attlayer", 2) in gated.gates:
            gated.gates[gate_name("attlayer", 2)].log_alpha.fill_(20.0)  # heads gone, out_proj bias stays
    gated.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_equals_gated_and_cost_equals_profiler(family: str, tmp_path: Path) -> None:
    model = _model(family)
    gated = attach_gates(model, ALL)
    x = _inputs(model, with_mask=family.endswith("-stable"))
    # all gates fully open: the gated model is the model, the cost is the profiler's
    with torch.no_grad():
        for gate in gated.gates.values():
            gate.log_alpha.fill_(30.0)
    full_out = _out(gated, x)
    gated.detach()
    plain = _out(model, x)
    assert torch.allclose(full_out, plain, atol=1e-5)
    gated = attach_gates(model, ALL)
    assert gated.full_cost("params") == count_params(model)["total"]
    assert gated.full_cost("macs", num_samples=NUM_SAMPLES) == count_macs(model, NUM_SAMPLES)
    assert float(gated.cost_model.cost({}, "macs", num_samples=NUM_SAMPLES)) == count_macs(model, NUM_SAMPLES)

    _set_masks(gated)
    masks = gated.eval_masks()
    assert int((masks[gate_name("head", 2)] != 0).sum()) == 0
    y_gated = _out(gated, x)
    pruned = gated.prune()
    y_pruned = _out(pruned, x)
    assert torch.allclose(y_gated, y_pruned, atol=1e-4), float((y_gated - y_pruned).abs().max())
    assert count_params(pruned)["total"] == gated.final_cost("params")
    assert count_macs(pruned, NUM_SAMPLES) == gated.final_cost("macs", num_samples=NUM_SAMPLES)
    parts = count_params(pruned)["parts"]
    assert parts["front_end"] == gated.final_cost("params", "frontend")
    # heads and FFN units really went away
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert getattr(pruned.config, STRUCTURE_KEY, None) is not None  # heads were pruned: not a stock shape

    save_pruned(pruned, tmp_path / "pruned")
    assert not list((tmp_path / "pruned").glob("*.bin"))  # safetensors only, no pickle
    again = load_pruned(tmp_path / "pruned")
    assert torch.allclose(_out(again, x), y_pruned, atol=1e-5)
    assert count_macs(again, NUM_SAMPLES) == count_macs(pruned, NUM_SAMPLES)
    if family == "wav2vec2":  # a stock loader refuses the non-stock shapes instead of loading something else
        with pytest.raises(RuntimeError):
            transformers.AutoModel.from_pretrained(tmp_path / "pruned")


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_classification_models_prune_and_reload(family: str, tmp_path: Path) -> None:
    model = _model(family, head=True)
    gated = attach_gates(model)  # default conv, head, interm
    _set_masks(gated, seed=1)
    x = _inputs(model)
    pruned = gated.prune()
    assert type(pruned).__name__ == type(model).__name__
    assert torch.allclose(_out(gated, x), _out(pruned, x), atol=1e-4)
    assert count_params(pruned)["total"] == gated.final_cost("params")
    assert count_macs(pruned, NUM_SAMPLES) == gated.final_cost("macs", num_samples=NUM_SAMPLES)
    save_pruned(pruned, tmp_path / "m")
    assert torch.allclose(_out(load_pruned(tmp_path / "m"), x), _out(pruned, x), atol=1e-5)


@pytest.mark.parametrize("family", ["wav2vec2", "data2vec-audio"])
def test_stock_fitting_result_reloads_with_plain_from_pretrained(family: str, tmp_path: Path) -> None:
    model = _model(family)
    gated = attach_gates(model, ("conv", "interm"))
    _set_masks(gated, seed=2)
    with torch.no_grad():  # the same FFN size (40 units) in every layer, different units
        for site in gated.sites.layers:
            la = torch.full((site.ffn_dim,), -20.0)
            la[torch.randperm(site.ffn_dim, generator=torch.Generator().manual_seed(site.number))[:40]] = 3.0
            gated.gates[gate_name("interm", site.number)].log_alpha.copy_(la)
    x = _inputs(model)
    pruned = gated.prune()
    assert type(pruned) is type(model)  # the stock class itself
    assert not hasattr(pruned.config, STRUCTURE_KEY)
    assert pruned.config.intermediate_size == 40
    assert list(pruned.config.conv_dim) == [int((m != 0).sum()) for k, m in gated.eval_masks().items()
                                            if k.startswith("conv")]
    assert torch.allclose(_out(gated, x), _out(pruned, x), atol=1e-4)
    pruned.save_pretrained(tmp_path / "stock")
    again = transformers.AutoModel.from_pretrained(tmp_path / "stock").eval()
    assert type(again) is type(model)
    assert torch.allclose(_out(again, x), _out(pruned, x), atol=1e-5)


@pytest.mark.parametrize("family", ["wav2vec2", "wavlm"])
def test_flop_counter_agrees_with_final_cost(family: str) -> None:
    model = _model(family)
    gated = attach_gates(model, ALL)
    _set_masks(gated, seed=4)
    pruned = gated.prune()
    measured = flop_counter_macs(pruned, NUM_SAMPLES)
    assert measured["total"] == gated.final_cost("macs", num_samples=NUM_SAMPLES)


def test_training_mode_samples_masks_and_gradients_reach_every_gate() -> None:
    model = _model("wavlm")
    gated = attach_gates(model, ALL)
    with torch.no_grad():  # away from saturation, so samples fall inside (0, 1) and carry gradient
        for gate in gated.gates.values():
            gate.log_alpha.fill_(0.0)
    gated.train()
    torch.manual_seed(0)
    x = _inputs(model)
    first = gated(**x).last_hidden_state
    assert not torch.allclose(first, gated(**x).last_hidden_state)  # a fresh mask per forward
    for _ in range(4):  # a single draw may clamp a one-unit gate to exactly 0 or 1 (no gradient)
        gated(**x).last_hidden_state.square().mean().backward()
    missing = [n for n, g in gated.gates.items() if g.log_alpha.grad is None or not g.log_alpha.grad.abs().sum() > 0]
    assert not missing, missing
    cost = gated.expected_cost("macs", "frontend")
    cost.backward()
    assert gated.gates[gate_name("conv", 0)].log_alpha.grad is not None


def test_speech_encoder_input_and_cost_parts() -> None:
    from speechprune.models import load_encoder

    enc = load_encoder("tiny:hubert")
    gated = attach_gates(enc)
    total = gated.expected_cost("params")
    assert float(total) == pytest.approx(
        float(gated.expected_cost("params", "frontend") + gated.expected_cost("params", "transformer")))
    assert gated.min_cost("macs") < gated.full_cost("macs")


def test_unsupported_inputs_fail_clearly() -> None:
    bert = transformers.BertModel(transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="supported"):
        attach_gates(bert)
    with pytest.raises(SpeechpruneError, match="unknown structure"):
        attach_gates(_model("wav2vec2"), ("conv", "neurons"))
    with pytest.raises(SpeechpruneError, match="kind"):
        attach_gates(_model("wav2vec2")).expected_cost("flops")
