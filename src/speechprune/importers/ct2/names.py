"""The name mapping: every CTranslate2 Whisper variable onto the Hugging Face parameter it becomes (each assigned
exactly once), the Whisper config the checkpoint implies, and its special tokens."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from speechprune.errors import ConversionError
from speechprune.importers.ct2.reader import _FLOAT_DTYPES, CT2Model

if TYPE_CHECKING:  # heavy imports stay inside functions so ``speechprune --help`` stays fast
    import torch


@dataclass
class WhisperTokens:
    """Special token ids, looked up by name in ``tokenizer.json`` (never hard-coded per checkpoint)."""

    eot: int
    sot: int
    no_timestamps: int
    multilingual: bool
    prompt: list[int]
    language: int | None = None
    transcribe: int | None = None
    translate: int | None = None
    lang_to_id: dict[str, int] = field(default_factory=dict)


class _Mapper:
    """Moves CTranslate2 weights into an HF state dict, enforcing a one-to-one correspondence.

    Each CTranslate2 weight must be *taken* exactly once and each HF key *put* exactly once; leftovers on either
    side are conversion errors. This is what makes a silent mis-mapping impossible.
    """

    def __init__(self, ct2: CT2Model, label: str) -> None:
        self.ct2 = ct2
        self.label = label
        self.remaining = {n: t for n, t in ct2.variables.items() if not t.is_scalar}
        self.state: dict[str, torch.Tensor] = {}

    def error(self, message: str) -> ConversionError:
        return ConversionError(f"cannot convert {self.label}: {message}")

    def take(self, name: str) -> torch.Tensor:
        target = self.ct2.aliases.get(name, name)
        tensor = self.remaining.pop(target, None)
        if tensor is None:
            what = "is used twice" if target in self.ct2.variables else "is missing"
            raise self.error(f"variable {name!r} {what}")
        if tensor.dtype not in _FLOAT_DTYPES:
            raise self.error(f"variable {name!r} is {tensor.dtype}; quantized checkpoints are not supported")
        return tensor.to_torch()

    def put(self, key: str, value: torch.Tensor) -> None:
        if key in self.state:
            raise self.error(f"HF parameter {key!r} assigned twice")
        self.state[key] = value

    def linear(self, src: str, dst: str, bias: bool = True) -> None:
        self.put(f"{dst}.weight", self.take(f"{src}/weight"))
        if bias:
            self.put(f"{dst}.bias", self.take(f"{src}/bias"))

    def layer_norm(self, src: str, dst: str) -> None:
        self.put(f"{dst}.weight", self.take(f"{src}/gamma"))
        self.put(f"{dst}.bias", self.take(f"{src}/beta"))

    def fused(self, src: str, dsts: Sequence[str], no_bias: Sequence[str] = ()) -> None:
        """Split a fused projection in equal row blocks; the blocks in ``no_bias`` must have a zero bias."""
        weight, bias = self.take(f"{src}/weight"), self.take(f"{src}/bias")
        parts = len(dsts)
        if weight.shape[0] % parts or bias.shape[0] != weight.shape[0]:
            raise self.error(f"{src} has shape {list(weight.shape)}, not {parts} equal blocks")
        for dst, w, b in zip(dsts, weight.chunk(parts), bias.chunk(parts)):
            self.put(f"{dst}.weight", w.clone())
            if dst in no_bias:
                if bool(b.ne(0).any()):
                    raise self.error(
                        f"{src}/bias has a non-zero block for {dst} (max |b| = {b.abs().max().item():.3g}), "
                        "but the HF projection has no bias; refusing to drop it"
                    )
            else:
                self.put(f"{dst}.bias", b.clone())

    def attention_block(self, src: str, dst: str) -> None:
        """Self-attention: fused q,k,v (k has no bias in Whisper) + output projection + pre-LayerNorm."""
        self.fused(f"{src}/linear_0", [f"{dst}.q_proj", f"{dst}.k_proj", f"{dst}.v_proj"], no_bias=[f"{dst}.k_proj"])
        self.linear(f"{src}/linear_1", f"{dst}.out_proj")


def _layer_count(ct2: CT2Model, stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for n in ct2.variables if (m := pattern.match(n))}
    if indices != set(range(len(indices))):
        raise ConversionError(f"{stack} layer indices are not contiguous: {sorted(indices)}")
    return len(indices)


def _map_whisper(ct2: CT2Model, label: str) -> dict[str, torch.Tensor]:
    """Build the HF state dict (keys without the tied ``proj_out.weight``) from a WhisperSpec model."""
    m = _Mapper(ct2, label)
    enc, dec = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        m.linear(f"encoder/{conv}", f"{enc}.{conv}")
    m.put(f"{enc}.embed_positions.weight", m.take("encoder/position_encodings/encodings"))
    for i in range(_layer_count(ct2, "encoder")):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        m.attention_block(f"{src}/self_attention", f"{dst}.self_attn")
        m.layer_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _map_ffn(m, src, dst)
    m.layer_norm("encoder/layer_norm", f"{enc}.layer_norm")

    m.put(f"{dec}.embed_tokens.weight", m.take("decoder/embeddings/weight"))
    m.put(f"{dec}.embed_positions.weight", m.take("decoder/position_encodings/encodings"))
    for i in range(_layer_count(ct2, "decoder")):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        m.attention_block(f"{src}/self_attention", f"{dst}.self_attn")
        m.layer_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        m.linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
        m.fused(f"{src}/attention/linear_1", [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"],
                no_bias=[f"{dst}.encoder_attn.k_proj"])
        m.linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
        m.layer_norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        _map_ffn(m, src, dst)
    m.layer_norm("decoder/layer_norm", f"{dec}.layer_norm")
    _check_tied_projection(m)
    if m.remaining:
        raise m.error(f"unmapped variables: {sorted(m.remaining)}")
    return m.state


def _map_ffn(m: _Mapper, src: str, dst: str) -> None:
    m.linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
    m.linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
    m.layer_norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")


def _check_tied_projection(m: _Mapper) -> None:
    """HF ties ``proj_out`` to the token embedding, so the CTranslate2 projection must be that same tensor."""
    name = "decoder/projection/weight"
    if m.ct2.aliases.get(name) == "decoder/embeddings/weight":
        return
    tensor = m.remaining.pop(name, None)
    if tensor is None:
        raise m.error(f"{name} is neither stored nor aliased to decoder/embeddings/weight")
    embeddings = m.ct2.variables["decoder/embeddings/weight"]
    if tensor.shape != embeddings.shape or not np.array_equal(tensor.array, embeddings.array):
        raise m.error(f"{name} differs from decoder/embeddings/weight; untied output projections are unsupported")


def _check_flags(ct2: CT2Model, label: str) -> None:
    """Reject variants whose computation HF Whisper does not reproduce (rather than converting them wrongly)."""
    expected = {
        "decoder/activation": 3,  # CTranslate2 ActivationType.GELU (exact erf GELU, as HF "gelu")
        "decoder/pre_norm": 1,
        "decoder/alibi": 0,
        "decoder/scale_embeddings": 0,
        "decoder/start_from_zero_embedding": 0,
    }
    flags = ct2.flags
    for name, value in expected.items():
        if name in flags and flags[name] != value:
            raise ConversionError(f"cannot convert {label}: flag {name} = {flags[name]}, HF Whisper needs {value}")


def _whisper_config_kwargs(ct2: CT2Model, label: str) -> dict[str, Any]:
    """Derive every architectural hyper-parameter from tensor shapes and the ``num_heads`` flags."""

    def shape(name: str) -> tuple[int, ...]:
        tensor = ct2.resolve(name)
        if tensor is None:
            raise ConversionError(f"cannot convert {label}: variable {name!r} is missing")
        return tensor.shape

    def heads(stack: str) -> int:
        value = ct2.flags.get(f"{stack}/num_heads")
        if value is None:
            raise ConversionError(f"cannot convert {label}: flag {stack}/num_heads is missing")
        return int(value)

    d_model, n_mels, _kernel = shape("encoder/conv1/weight")
    kwargs = {
        "d_model": d_model,
        "num_mel_bins": n_mels,
        "encoder_layers": _layer_count(ct2, "encoder"),
        "decoder_layers": _layer_count(ct2, "decoder"),
        "encoder_attention_heads": heads("encoder"),
        "decoder_attention_heads": heads("decoder"),
        "encoder_ffn_dim": shape("encoder/layer_0/ffn/linear_0/weight")[0],
        "decoder_ffn_dim": shape("decoder/layer_0/ffn/linear_0/weight")[0],
        "vocab_size": shape("decoder/embeddings/weight")[0],
        "max_source_positions": shape("encoder/position_encodings/encodings")[0],
        "max_target_positions": shape("decoder/position_encodings/encodings")[0],
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
    }
    for stack in ("encoder", "decoder"):
        if d_model % kwargs[f"{stack}_attention_heads"]:
            raise ConversionError(f"cannot convert {label}: d_model {d_model} not divisible by {stack} heads")
    return kwargs


def _whisper_tokens(tokenizer_file: Path, vocab_size: int) -> WhisperTokens:
    """Find the special tokens by their text in ``tokenizer.json`` and build the greedy decoding prompt.

    Multilingual iff the vocabulary has >= 51865 entries: the rule used by OpenAI Whisper and CTranslate2
    (English-only checkpoints still list language tokens in their tokenizer, so their presence proves nothing).
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))

    def tid(text: str, required: bool = True) -> int | None:
        value = tok.token_to_id(text)
        if value is None and required:
            raise ConversionError(f"{tokenizer_file} has no {text} token")
        if value is not None and value >= vocab_size:
            raise ConversionError(f"{tokenizer_file}: {text} has id {value} >= model vocabulary {vocab_size}")
        return value

    eot, sot, no_ts = tid("<|endoftext|>"), tid("<|startoftranscript|>"), tid("<|notimestamps|>")
    assert eot is not None and sot is not None and no_ts is not None
    tokens = WhisperTokens(eot=eot, sot=sot, no_timestamps=no_ts, multilingual=vocab_size >= 51865, prompt=[])
    if tokens.multilingual:
        tokens.language, tokens.transcribe = tid("<|en|>"), tid("<|transcribe|>")
        tokens.translate = tid("<|translate|>", required=False)
        tokens.prompt = [sot, tokens.language, tokens.transcribe, no_ts]  # type: ignore[list-item]
        tokens.lang_to_id = _language_tokens(tok, sot, tokens.transcribe)  # type: ignore[arg-type]
    else:
        tokens.prompt = [sot, no_ts]
    return tokens


def _language_tokens(tok: Any, sot: int, stop: int) -> dict[str, int]:
    """Language tokens sit between ``<|startoftranscript|>`` and ``<|translate|>``/``<|transcribe|>``."""
    out: dict[str, int] = {}
    for token_id in range(sot + 1, stop):
        text = tok.id_to_token(token_id)
        if text and re.fullmatch(r"<\|[a-z]{2,3}(_[a-z]+)?\|>", text) and text not in ("<|translate|>",):
            out[text] = token_id
    return out
