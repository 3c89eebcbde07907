"""The conformance suite every model family passes, in the spirit of transformers' ``ModelTesterMixin``.

``check_family(case)`` builds the family's tiny randomly initialised model in code (``speechprune.models.tiny``)
and checks what the rest of speechprune relies on:

1. **module map** — the family object (``speechprune.models.registry``) and the adapter agree on the layers; every
   gatable conv feeds a consumer of its width; every layer has q/k/v/out projections and an FFN of the config's
   size; every parameter of the profiled model belongs to exactly one part;
2. **states** — L + 1 states of shape B × T × D from one pass, finite, padding-independent frame counts, the
   final norm applied only on request;
3. **surgery** — a model truncated to k layers has the original's states 0..k, a model without layer j has the
   original's states before j; structured pruning (random masks incl. an empty attention and an empty FFN) gives
   the gated model's output;
4. **save / reload** — the truncated and the structurally pruned models reload (plain ``load_encoder``) with
   identical outputs;
5. **cost** — the analytic MACs equal ``torch.utils.flop_counter`` counts (per part and per layer), for the stock
   and for the pruned model.

Adding a family: its file in ``speechprune/models`` and its line in :data:`FAMILY_CASES`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from speechprune.compress.structured import attach_gates, gate_name, save_pruned
from speechprune.models import load_encoder, wrap_model
from speechprune.models.registry import SUPPORTED_FAMILIES, family_of
from speechprune.models.tiny import build_model, tiny_config
from speechprune.profile import count_params, flop_counter_macs, mac_breakdown
from speechprune.profile.arch import part_modules

#: One entry per family variant; every supported model type must appear (``test_every_family_has_a_case``).
FAMILY_CASES = ("wav2vec2", "wav2vec2-stable", "hubert", "wavlm", "wavlm-stable", "data2vec-audio", "whisper")
NUM_SAMPLES = 8000


def tiny_model(case: str) -> torch.nn.Module:
    model_type = case.removesuffix("-stable")
    return build_model(tiny_config(model_type, stable_layer_norm=case.endswith("-stable")), seed=0)


def _waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(NUM_SAMPLES).astype(np.float32) * 0.1,
            rng.standard_normal(NUM_SAMPLES * 3 // 4).astype(np.float32) * 0.1]


def check_family(case: str, tmp_path: Path) -> None:
    model_type = case.removesuffix("-stable")
    model = tiny_model(case)
    family = family_of(model)
    enc = wrap_model(model)
    assert model_type in SUPPORTED_FAMILIES and model_type in family.model_types
    _check_module_map(family, enc, model)
    _check_states(enc)
    _check_layer_surgery(enc, tmp_path / "truncated")
    _check_structured_surgery(enc, tmp_path / "pruned")


def _check_module_map(family, enc, model) -> None:  # noqa: ANN001
    assert isinstance(enc, family.adapter_class()) and enc.family == model.config.model_type
    parts = family.resolve(model)
    mm = family.module_map(parts.base)
    assert [p.layer for p in mm.layers] == list(enc.layers), "module map and adapter disagree on the layers"
    assert len(mm.layers) == enc.num_layers == getattr(model.config, family.num_layers_key)
    assert [p.number for p in mm.layers] == list(range(1, enc.num_layers + 1))
    assert mm.gatable_convs and set(mm.gatable_convs) <= set(range(len(mm.convs)))
    for i in mm.gatable_convs:
        consumer = mm.conv_consumer(i)
        width = consumer.in_channels if isinstance(consumer, torch.nn.Conv1d) else consumer.in_features
        assert width == mm.convs[i].channels, f"conv {i} does not feed its consumer"
    for p in mm.layers:
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert isinstance(getattr(p.attn, name), torch.nn.Linear), (p.number, name)
        assert p.fc1.out_features == p.fc2.in_features == getattr(model.config, family.ffn_size_key)
    assert mm.positional and mm.positional_kind in ("conv", "sinusoidal_table")
    assert (enc.final_norm is not None) == (mm.encoder_norm is not None and mm.norm_position == "after_layers")
    groups = part_modules(parts)
    owners: dict[int, str] = {}
    for part, modules in groups.items():
        for m in modules:
            for prm in m.parameters():
                assert owners.setdefault(id(prm), part) == part, f"a parameter is in {owners[id(prm)]} and {part}"
    params = count_params(model)
    assert params["total"] == sum(params["parts"].values())
    stray = params["parts"]["other"]
    assert stray <= model.config.hidden_size if hasattr(model.config, "hidden_size") else stray == 0, stray


def _check_states(enc) -> None:  # noqa: ANN001
    waves = _waves()
    inputs = enc.prepare(waves)
    states = enc.hidden_states(inputs)
    assert len(states) == enc.num_layers + 1
    t = states[0].shape[1]
    for s in states:
        assert s.shape == (2, t, enc.hidden_size) and torch.isfinite(s).all()
    assert inputs.frame_lengths[0] >= inputs.frame_lengths[1] > 0 and int(inputs.frame_lengths[0]) <= t
    normed = enc.hidden_states(inputs, final_norm=True)
    assert torch.allclose(normed[-2], states[-2], atol=1e-6)
    if enc.final_norm is None:
        assert torch.allclose(normed[-1], states[-1], atol=1e-6)
    else:
        assert not torch.allclose(normed[-1], states[-1])
    assert torch.allclose(enc.hidden_states(inputs, layers=[1, 0])[0], states[1], atol=1e-6)


def _check_layer_surgery(enc, out: Path) -> None:  # noqa: ANN001
    waves = _waves()
    states = enc.hidden_states(waves)
    short = enc.keep_layers(2)
    kept = short.hidden_states(waves)
    assert short.num_layers == 2 and short.kept_layers == [1, 2]
    for k in range(3):
        assert torch.allclose(kept[k], states[k], atol=1e-5), f"state {k} changed by truncation"
    dropped = enc.drop_layers([2])
    assert dropped.num_layers == enc.num_layers - 1 and dropped.kept_layers[:2] == [1, 3]
    assert torch.allclose(dropped.hidden_states(waves)[1], states[1], atol=1e-5)
    short.save_pretrained(out)
    again = load_encoder(out)
    assert again.family == enc.family and again.num_layers == 2
    for a, b in zip(again.hidden_states(waves), kept):
        assert torch.allclose(a, b, atol=1e-5), "truncated model changed on reload"


def _check_structured_surgery(enc, out: Path) -> None:  # noqa: ANN001
    model = enc.profiled_module if enc.has_fixed_window else enc.model
    gated = attach_gates(model, ("conv", "head", "interm", "attlayer", "ffnlayer"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for gate in gated.gates.values():
            gate.log_alpha.copy_(torch.randn(gate.n, generator=gen) * 2.0 + 1.0)
        gated.gates[gate_name("attlayer", 1)].log_alpha.fill_(-20.0)  # no attention left in layer 1
        gated.gates[gate_name("ffnlayer", 2)].log_alpha.fill_(-20.0)  # no FFN left in layer 2
    gated.eval()
    x = {k: v for k, v in enc.prepare(_waves()).model_kwargs.items()}
    with torch.no_grad():
        want = gated.model(**x).last_hidden_state
    pruned = gated.prune()
    with torch.no_grad():
        got = pruned(**x).last_hidden_state
    assert torch.allclose(got, want, atol=1e-4), "pruned model differs from the gated one"
    for m in (model.eval(), pruned):
        analytic = mac_breakdown(m, NUM_SAMPLES)
        counted = flop_counter_macs(m, NUM_SAMPLES)
        assert analytic["parts"] == counted["parts"], "analytic MACs per part differ from FlopCounter"
        assert [r["total"] for r in analytic["layers"]] == counted["layers"]
    save_pruned(pruned, out)
    again = load_encoder(out)
    assert type(again).__name__ == type(enc).__name__
    with torch.no_grad():
        assert torch.allclose(again.encode(again.prepare(_waves())), got, atol=1e-4), "pruned model changed on reload"
