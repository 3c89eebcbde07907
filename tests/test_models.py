"""Model adapters and layer surgery on tiny random configs of every family (and their stable-layer-norm
variants), plus the real Whisper tiny.en."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from speechprune.errors import LayerIndexError, SpeechpruneError, UnsupportedModelError
from speechprune.models import load_encoder, wrap_model
from speechprune.models.io import SIDE_FILE

FAMILIES = ["wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper", "wav2vec2-stable", "wavlm-stable"]


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 11000, 7000)]


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_state_shapes_and_frame_lengths(family: str, waves: list[np.ndarray]) -> None:
    enc = load_encoder(f"tiny:{family}")
    states = enc.hidden_states(waves)
    assert len(states) == enc.num_layers + 1 == 5
    frames = enc.frame_lengths(torch.tensor([len(w) for w in waves]))
    # 50 frames per second for every family (real strides); the wav2vec2 CNN loses one frame to its kernel.
    expected_t = 150 if family == "whisper" else int(frames.max())
    for s in states:
        assert s.shape == (3, expected_t, enc.hidden_size)
        assert s.dtype == torch.float32 and torch.isfinite(s).all()
    assert frames.tolist() == ([50, 35, 22] if family == "whisper" else [49, 34, 21])
    assert enc.frame_rate == pytest.approx(50.0)
    # consecutive states differ (each layer does something) and selecting layers returns the same tensors
    assert not torch.allclose(states[1], states[2])
    picked = enc.hidden_states(waves, layers=[3, 0])
    assert torch.equal(picked[0], states[3]) and torch.equal(picked[1], states[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_final_norm_convention(family: str, waves: list[np.ndarray]) -> None:
    """State L is the raw output of layer L; with final_norm=True it is the model's own last output."""
    enc = load_encoder(f"tiny:{family}")
    raw = enc.hidden_states(waves)[-1]
    normed = enc.hidden_states(waves, final_norm=True)[-1]
    model_out = enc.encode(waves)
    torch.testing.assert_close(normed, model_out, atol=1e-6, rtol=0)
    has_final_norm = family == "whisper" or family.endswith("-stable")
    assert (enc.final_norm is not None) == has_final_norm
    assert torch.allclose(raw, normed) != has_final_norm


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("k", [1, 3])
def test_keep_k_layers_matches_original_state_k(family: str, k: int, waves: list[np.ndarray]) -> None:
    enc = load_encoder(f"tiny:{family}")
    full = enc.hidden_states(waves)
    cut = enc.keep_layers(k)
    assert cut.num_layers == k and enc.num_layers == 4, "surgery must not modify the original"
    assert cut.kept_layers == list(range(1, k + 1))
    part = cut.hidden_states(waves)
    assert len(part) == k + 1
    for i in range(k + 1):
        torch.testing.assert_close(part[i], full[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_reload_with_plain_from_pretrained(family: str, waves: list[np.ndarray], tmp_path) -> None:
    enc = load_encoder(f"tiny:{family}").drop_layers([2, 4])
    out_dir = enc.save_pretrained(tmp_path / "m")
    config = json.loads((out_dir / "config.json").read_text())
    key = "encoder_layers" if family == "whisper" else "num_hidden_layers"
    assert config[key] == 2
    assert (out_dir / "model.safetensors").is_file()
    assert json.loads((out_dir / SIDE_FILE).read_text())["kept_layers_of_source"] == [1, 3]
    # plain transformers, no speechprune code involved in loading
    reloaded = transformers.AutoModel.from_pretrained(out_dir).eval()
    assert type(reloaded) is type(enc.model)
    inputs = enc.prepare(waves)
    with torch.inference_mode():
        if family == "whisper":
            a = enc.model.encoder(**inputs.model_kwargs).last_hidden_state
            b = reloaded.encoder(**inputs.model_kwargs).last_hidden_state
        else:
            a = enc.model(**inputs.model_kwargs).last_hidden_state
            b = reloaded(**inputs.model_kwargs).last_hidden_state
    assert torch.equal(a, b)
    # and through our own loader the states match too (feature extractor settings saved alongside)
    again = load_encoder(str(out_dir))
    assert again.preparation_options() == enc.preparation_options()
    for x, y in zip(again.hidden_states(waves), enc.hidden_states(waves)):
        assert torch.equal(x, y)


def test_drop_middle_layer_composes_remaining_layers(waves: list[np.ndarray]) -> None:
    """Dropping layer 2 of 4: new state 1 = old state 1; new state 2 = old layer 3 applied to old state 1."""
    enc = load_encoder("tiny:hubert")
    old = enc.hidden_states(waves)
    new = enc.drop_layers([2]).hidden_states(waves)
    torch.testing.assert_close(new[1], old[1], atol=1e-6, rtol=0)
    layer3 = enc.layers[2]
    with torch.inference_mode():
        manual = layer3(old[1])
    manual = manual[0] if isinstance(manual, tuple) else manual
    torch.testing.assert_close(new[2], manual, atol=1e-5, rtol=0)
    assert not torch.allclose(new[2], old[2], atol=1e-3)


@pytest.mark.parametrize("family", ["wavlm", "wavlm-stable"])
def test_wavlm_dropping_first_layer_keeps_the_relative_position_bias(family: str, waves, tmp_path) -> None:
    """WavLM computes its relative position bias in layer 1 only and passes it down. After dropping layer 1
    the remaining layers must still get that exact bias: compare with a manual run that computes the bias from
    the original first layer's embedding and then applies original layers 2..4."""
    enc = load_encoder(f"tiny:{family}")
    old_states = enc.hidden_states(waves)
    dropped = enc.drop_layers([1])
    assert dropped.layers[0].attention.rel_attn_embed is not None
    new_states = dropped.hidden_states(waves)
    torch.testing.assert_close(new_states[0], old_states[0], atol=1e-6, rtol=0)

    inputs = enc.prepare(waves)
    t = old_states[0].shape[1]
    first = enc.layers[0].attention
    with torch.inference_mode():
        bias = first.compute_bias(t, t)
        bias = bias.unsqueeze(0).repeat(len(waves), 1, 1, 1).view(len(waves) * first.num_heads, t, t)
        h = old_states[0]
        mask = _wavlm_extended_mask(enc, inputs)
        for i, layer in enumerate(enc.layers[1:], start=1):
            h, bias = layer(h, attention_mask=mask, position_bias=bias, index=i)
            torch.testing.assert_close(new_states[i], h, atol=1e-5, rtol=0)
    # without the bias (a naive deletion) the result is different: the test can fail
    naive = torch.nn.ModuleList(list(enc.layers)[1:])
    assert not hasattr(naive[0].attention, "rel_attn_embed")

    out = dropped.save_pretrained(tmp_path / "wavlm")
    reloaded = wrap_model(transformers.WavLMModel.from_pretrained(out), dropped.feature_extractor)
    for a, b in zip(reloaded.hidden_states(waves), new_states):
        assert torch.equal(a, b)


def _wavlm_extended_mask(enc, inputs):
    """The attention mask the WavLM encoder passes to its layers (None for group-norm variants)."""
    if "attention_mask" not in inputs.model_kwargs:
        return None
    captured = {}

    def hook(_m, args, kwargs):
        captured["mask"] = kwargs.get("attention_mask")

    h = enc.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            enc.base(**inputs.model_kwargs)
    finally:
        h.remove()
    return captured["mask"]


def test_weighted_layer_sum_head_is_sliced(tmp_path) -> None:
    from speechprune.models.tiny import tiny_config

    cfg = tiny_config("wav2vec2", use_weighted_layer_sum=True, num_labels=3)
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.layer_weights.copy_(torch.arange(5, dtype=torch.float32))
    enc = wrap_model(model).drop_layers([1, 3])
    assert enc.model.layer_weights.tolist() == [0.0, 2.0, 4.0]
    out = enc.save_pretrained(tmp_path / "clf")
    reloaded = transformers.AutoModelForAudioClassification.from_pretrained(out).eval()
    x = torch.randn(2, 16000)
    with torch.inference_mode():
        assert torch.equal(reloaded(x).logits, enc.model(x).logits)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda e: e.keep_layers(0), "choose 1..4"),
        (lambda e: e.keep_layers(5), "choose 1..4"),
        (lambda e: e.drop_layers([0]), "numbered 1..4"),
        (lambda e: e.drop_layers([5]), "numbered 1..4"),
        (lambda e: e.drop_layers([1, 2, 3, 4]), "at least one"),
        (lambda e: e.check_state_index(5), "valid states are 0..4"),
        (lambda e: e.hidden_states([np.zeros(16000, np.float32)], layers=[7]), "out of range"),
    ],
)
def test_layer_index_errors(call, message: str) -> None:
    enc = load_encoder("tiny:wav2vec2")
    with pytest.raises(LayerIndexError, match=message):
        call(enc)


def test_unsupported_family_is_refused(tmp_path) -> None:
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    with pytest.raises(UnsupportedModelError, match="'bert' is not supported.*wav2vec2, hubert, wavlm"):
        wrap_model(transformers.BertModel(cfg))
    cfg.save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedModelError, match="bert"):
        load_encoder(str(tmp_path / "bert"))
    with pytest.raises(UnsupportedModelError, match="conformer"):
        load_encoder("tiny:conformer")
    with pytest.raises(SpeechpruneError, match="cannot load model"):
        load_encoder(str(tmp_path / "does-not-exist"))


def test_clip_shorter_than_receptive_field_is_a_clear_error() -> None:
    enc = load_encoder("tiny:wav2vec2")
    with pytest.raises(SpeechpruneError, match="shorter than the model's receptive field"):
        enc.prepare([np.zeros(300, np.float32)])


def test_whisper_window_option(waves) -> None:
    enc = load_encoder("tiny:whisper")
    short = enc.with_window(1.0)
    assert short.window_positions == 50 and enc.window_positions == 150
    states = short.hidden_states(waves)
    assert states[0].shape == (3, 50, 32)
    with pytest.raises(SpeechpruneError, match="longer than"):
        enc.with_window(4.0)
    with pytest.raises(SpeechpruneError, match="multiple of 0.02"):
        enc.with_window(0.011)
    with pytest.raises(SpeechpruneError, match="Whisper only"):
        load_encoder("tiny:wav2vec2", window_seconds=1.0)


@pytest.mark.real_weights
def test_real_whisper_tiny_states_surgery_and_round_trip(whisper_tiny_dir, shared_data, tmp_path) -> None:
    import soundfile as sf

    wav, sr = sf.read(shared_data / "fsdd" / "wav" / "0_george_5.wav", dtype="float32")
    assert sr == 16000
    enc = load_encoder(str(whisper_tiny_dir))
    assert (enc.family, enc.num_layers, enc.hidden_size) == ("whisper", 4, 384)
    states = enc.hidden_states([wav, wav[: len(wav) // 2]])
    assert len(states) == 5 and all(s.shape == (2, 1500, 384) for s in states)
    cut = enc.keep_layers(2)
    for i in range(3):
        torch.testing.assert_close(cut.hidden_states([wav])[i], states[i][:1], atol=1e-5, rtol=0)
    out = cut.save_pretrained(tmp_path / "tiny2")
    reloaded = transformers.WhisperForConditionalGeneration.from_pretrained(out).eval()
    feats = cut.prepare([wav]).model_kwargs["input_features"]
    with torch.inference_mode():
        a = reloaded.model.encoder(feats).last_hidden_state
        b = cut.model.model.encoder(feats).last_hidden_state
    assert torch.equal(a, b)
    size_full = sum(f.stat().st_size for f in whisper_tiny_dir.glob("*.safetensors"))
    size_cut = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert size_cut < size_full

