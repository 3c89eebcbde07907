"""Analytic MACs and parameter counts vs FlopCounterMode and the reference figures of docs/cpu-performance.md §4.

The analytic model counts exactly what FlopCounterMode counts, so most checks demand *exact* per-part equality;
the ≤ 0.1 % total check is kept too because that is the documented contract.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from speechprune.errors import UnsupportedModelError
from speechprune.profile import (
    ArchSpec,
    attention_macs,
    build_config_model,
    conv1d_macs,
    conv_out_len,
    count_params,
    ffn_macs,
    flop_counter_macs,
    mac_breakdown,
    macs_per_second,
)

transformers = pytest.importorskip("transformers")
from transformers.models.whisper.modeling_whisper import WhisperEncoder  # noqa: E402

G = 1e9


def _check_exact(model: nn.Module, num_samples: int = 16_000) -> tuple[dict, dict]:
    """Analytic vs FlopCounter: totals within 0.1 % and every part identical."""
    analytic = mac_breakdown(model, num_samples)
    counted = flop_counter_macs(model, num_samples)
    rel = abs(analytic["total"] - counted["per_clip"]) / counted["per_clip"]
    assert rel < 1e-3, (analytic["total"], counted["per_clip"])
    assert analytic["parts"] == counted["parts"]
    assert [r["total"] for r in analytic["layers"]] == counted["layers"]
    return analytic, counted


@pytest.fixture(scope="module")
def w2v2_base() -> nn.Module:
    return build_config_model("default:wav2vec2")


def test_wav2vec2_base_matches_reference_and_flop_counter(w2v2_base: nn.Module) -> None:
    analytic, counted = _check_exact(w2v2_base)
    parts = analytic["parts"]
    assert analytic["frames"] == 49
    assert analytic["total"] / G == pytest.approx(6.911, abs=0.001)
    assert counted["per_clip"] / G == pytest.approx(6.911, abs=0.001)
    assert parts["front_end"] / G == pytest.approx(2.450, abs=0.001)
    assert parts["feature_projection"] / G == pytest.approx(0.0193, abs=0.0005)
    assert parts["positional"] / G == pytest.approx(0.2359, abs=0.0005)
    assert parts["layers"] / G == pytest.approx(4.206, abs=0.001)
    assert analytic["layers"][0]["total"] / G == pytest.approx(0.3505, abs=0.0002)
    per_conv = [r["macs"] / G for r in analytic["front_end_layers"]]
    assert per_conv == pytest.approx([0.016, 1.258, 0.628, 0.314, 0.156, 0.052, 0.026], abs=0.0015)
    assert [r["t_out"] for r in analytic["front_end_layers"]] == [3199, 1599, 799, 399, 199, 99, 49]
    assert macs_per_second(w2v2_base, 1.0) / G == pytest.approx(6.911, abs=0.001)


def test_per_term_formulas_reproduce_a_layer(w2v2_base: nn.Module) -> None:
    layer = mac_breakdown(w2v2_base)["layers"][0]
    assert attention_macs(49, 768, 12, 64) + ffn_macs(49, 768, 3072) == layer["total"]
    assert conv1d_macs(conv_out_len(16_000, 10, 5), 10, 1, 512) == 16_378_880


def test_formulas_are_differentiable() -> None:
    """Expected kept counts from HardConcrete gates are tensors; the cost must backpropagate to them."""
    heads = torch.tensor(6.5, requires_grad=True)
    d_ff = torch.tensor(1000.0, requires_grad=True)
    c_in = torch.tensor(300.0, requires_grad=True)
    cost = attention_macs(49, 768, heads, 64) + ffn_macs(49, 768, d_ff) + conv1d_macs(99, 2, c_in, 512)
    cost.backward()
    assert heads.grad.item() == pytest.approx(4 * 49 * 768 * 64 + 2 * 49 * 49 * 64)
    assert d_ff.grad.item() == pytest.approx(2 * 49 * 768)
    assert c_in.grad.item() == pytest.approx(99 * 2 * 512)


@pytest.mark.parametrize("family", ["hubert", "wavlm", "data2vec-audio"])
def test_default_ssl_families_match_flop_counter(family: str) -> None:
    analytic, _ = _check_exact(build_config_model(f"default:{family}"))
    if family == "hubert":
        assert analytic["total"] / G == pytest.approx(6.911, abs=0.001)
    if family == "wavlm":  # the gated relative-position linear is counted (+0.0036 G over wav2vec2)
        assert analytic["total"] / G == pytest.approx(6.915, abs=0.001)
        assert all(r["gru_rel_pos"] == 49 * 768 * 8 for r in analytic["layers"])


@pytest.mark.parametrize(
    ("kwargs", "gmacs"),
    [
        ({}, 18.469),  # tiny-sized: d_model 384, 4 layers, 6 heads, FFN 1536 (WhisperConfig defaults)
        (dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048), 43.684),  # base
        (dict(max_source_positions=150), 1.2248),  # a short window
    ],
)
def test_whisper_encoder_matches_flop_counter(kwargs: dict, gmacs: float) -> None:
    model = WhisperEncoder(transformers.WhisperConfig(**kwargs)).eval()
    analytic, _ = _check_exact(model)
    assert analytic["total"] / G == pytest.approx(gmacs, abs=0.001)
    assert analytic["frames"] == model.config.max_source_positions
    assert any("does not depend on the clip length" in n for n in analytic["notes"])


def test_whisper_cost_is_per_window() -> None:
    spec = ArchSpec.from_model(build_config_model("tiny:whisper"))  # 3 s window
    one, short = mac_breakdown(spec, 16_000), mac_breakdown(spec, 8_000)
    assert one["total"] == short["total"] and one["windows"] == 1
    assert mac_breakdown(spec, 4 * 16_000)["total"] == 2 * one["total"]  # 4 s needs two 3 s windows


_TINY = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=20, num_labels=3,
    conv_dim=(24, 40, 32, 48, 32, 40, 56), num_conv_pos_embeddings=12, num_conv_pos_embedding_groups=4,
)


@pytest.mark.parametrize(
    ("config_cls", "model_cls", "extra"),
    [
        ("Wav2Vec2Config", "Wav2Vec2Model", {}),
        ("Wav2Vec2Config", "Wav2Vec2ForCTC", dict(do_stable_layer_norm=True, feat_extract_norm="layer",
                                                  adapter_attn_dim=8)),
        ("Wav2Vec2Config", "Wav2Vec2ForCTC", dict(add_adapter=True, output_hidden_size=32, num_adapter_layers=2)),
        ("HubertConfig", "HubertForSequenceClassification", dict(feat_extract_norm="layer", conv_pos_batch_norm=True)),
        ("WavLMConfig", "WavLMForAudioFrameClassification", {}),
        ("Data2VecAudioConfig", "Data2VecAudioForSequenceClassification",
         dict(num_conv_pos_embeddings=3, conv_pos_kernel_size=7, use_weighted_layer_sum=True)),
    ],
)
def test_tiny_configs_with_per_layer_conv_dims(config_cls: str, model_cls: str, extra: dict) -> None:
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**{**_TINY, **extra})).eval()
    analytic, _ = _check_exact(model, 12_345)
    spec = ArchSpec.from_model(model)
    assert [c.c_out for c in spec.front_end] == list(_TINY["conv_dim"])
    if model_cls != "Wav2Vec2Model" and "adapter_attn_dim" not in extra:
        assert analytic["parts"]["head"] > 0


@pytest.mark.parametrize("cls", ["WhisperModel", "WhisperForConditionalGeneration", "WhisperForAudioClassification"])
def test_whisper_wrappers_profile_the_encoder(cls: str) -> None:
    cfg = transformers.WhisperConfig(
        d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=96, decoder_layers=1,
        decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=64, vocab_size=40, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=3, num_labels=4,
    )
    model = getattr(transformers, cls)(cfg).eval()
    analytic, _ = _check_exact(model)
    params = count_params(model)
    enc = model.get_encoder() if cls != "WhisperForAudioClassification" else model.encoder
    head = 0 if cls != "WhisperForAudioClassification" else analytic["parts"]["head"]
    assert analytic["total"] == mac_breakdown(enc)["total"] + head
    enc_params = sum(p.numel() for p in enc.parameters())
    assert params["frozen"] == enc.embed_positions.weight.numel() == params["parts"]["positional"]
    if cls == "WhisperForAudioClassification":
        assert params["total"] == sum(p.numel() for p in model.parameters())
    else:
        assert params["total"] == enc_params
        assert params["excluded"] == sum(p.numel() for p in model.parameters()) - enc_params


def test_modified_model_is_described_by_its_modules() -> None:
    """Drop a layer, shrink an FFN, prune heads and conv channels: analytic must still equal FlopCounter."""
    cfg = transformers.Wav2Vec2Config(**{**_TINY, "num_hidden_layers": 4})
    model = transformers.Wav2Vec2Model(cfg).eval()
    before = mac_breakdown(model)["total"]
    enc = model.encoder
    del enc.layers[1]
    ff = enc.layers[0].feed_forward
    ff.intermediate_dense, ff.output_dense = nn.Linear(64, 40), nn.Linear(40, 64)
    att = enc.layers[1].attention  # keep 2 of 4 heads (head_dim 16)
    att.q_proj, att.k_proj, att.v_proj, att.out_proj = nn.Linear(64, 32), nn.Linear(64, 32), nn.Linear(64, 32), \
        nn.Linear(32, 64)
    convs = model.feature_extractor.conv_layers
    convs[3].conv = nn.Conv1d(32, 20, 3, stride=2, bias=False)
    convs[4].conv = nn.Conv1d(20, 32, 3, stride=2, bias=False)

    spec = ArchSpec.from_model(model)
    assert spec.num_layers == 3
    assert spec.layers[0].ffn is not None and spec.layers[0].ffn.d_ff == 40
    assert spec.layers[1].attention is not None and spec.layers[1].attention.num_heads == 2
    assert spec.front_end[3].c_out == 20
    analytic, _ = _check_exact(model)
    assert analytic["total"] < before


def test_unsupported_models_are_named() -> None:
    bert = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=37, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match=r"model_type='bert'.*wav2vec2, hubert, wavlm"):
        ArchSpec.from_model(bert)
    with pytest.raises(UnsupportedModelError, match="Linear"):
        mac_breakdown(nn.Linear(3, 4))
    with pytest.raises(UnsupportedModelError, match="tiny:wav2vec2"):
        build_config_model("tiny:bert")


def test_params_per_part(w2v2_base: nn.Module) -> None:
    params = count_params(w2v2_base)
    assert params["total"] == 94_371_712 == sum(p.numel() for p in w2v2_base.parameters())
    assert sum(params["parts"].values()) == params["total"]
    parts = params["parts"]
    assert (parts["front_end"], parts["feature_projection"], parts["positional"]) == (4_200_448, 395_008, 4_719_488)
    assert parts["layers"] == sum(params["layers"]) == 85_054_464
    assert parts["final_norms"] == 1_536 and parts["other"] == 768  # encoder LayerNorm; masked_spec_embed


def test_params_with_head_sum_to_total() -> None:
    model = transformers.Wav2Vec2ForSequenceClassification(
        transformers.Wav2Vec2Config(**{**_TINY, "use_weighted_layer_sum": True})
    )
    params = count_params(model)
    assert sum(params["parts"].values()) == params["total"] == sum(p.numel() for p in model.parameters())
    head = model.projector, model.classifier
    assert params["parts"]["head"] == sum(p.numel() for m in head for p in m.parameters())
    assert params["parts"]["other"] == model.layer_weights.numel() + model.wav2vec2.masked_spec_embed.numel()
