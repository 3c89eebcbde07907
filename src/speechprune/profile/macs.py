"""Analytic multiply-accumulate (MAC) counts, per part and per term.

Convention (:data:`MAC_CONVENTION`): 1 MAC = one multiply-add = 2 FLOPs, i.e. ``FlopCounterMode`` FLOPs ÷ 2. We count
exactly what ``torch.utils.flop_counter`` counts, so the two agree to the MAC: ``nn.Linear`` (mm/addmm), ``nn.Conv1d``
(convolution) and the attention matmuls QKᵀ and AV (bmm/baddbmm). Bias additions, norms, activations, softmax,
residual adds, mean pooling and WavLM's relative-position *bucket embedding* (a lookup) are not MACs; WavLM's
``gru_rel_pos_linear`` *is* a Linear and is counted.

The per-term functions (``conv1d_macs``, ``linear_macs``, ``attention_macs``, ``ffn_macs``, ...) are plain arithmetic on
their arguments, so they accept Python numbers **and** torch tensors: structured pruning will pass expected kept
counts from HardConcrete gates (``E[C_l]``, ``E[h]``, ``E[F]``) and differentiate the cost.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from speechprune.errors import SpeechpruneError
from speechprune.profile.arch import PARTS, ArchSpec, ConvSpec, LinearSpec

MAC_CONVENTION = (
    "1 MAC = one multiply-add = 2 FLOPs (torch FlopCounterMode FLOPs / 2). Counted: Linear, Conv1d and the attention "
    "matmuls QK^T and AV (each T^2 x heads x head_dim). Not counted: bias adds, norms, activations, softmax, residual "
    "adds, pooling, WavLM's relative-position bucket embedding; WavLM's gru_rel_pos_linear is a Linear and is counted."
)


# ---------------------------------------------------------------------------------------------------------------
# per-term formulas: plain functions of sizes (numbers or tensors)


def conv_out_len(t_in: Any, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> Any:
    """Output length of a 1-D convolution (PyTorch's formula): ⌊(t + 2p − d(k−1) − 1)/s⌋ + 1."""
    return (t_in + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv1d_macs(t_out: Any, k: Any, c_in: Any, c_out: Any, groups: Any = 1) -> Any:
    """MACs of a Conv1d: every output sample is a dot product of length k·c_in/groups. Exact integer arithmetic
    for ints (c_in is a multiple of groups); true division for floats/tensors (expected kept counts)."""
    macs = t_out * k * c_in * c_out
    return macs // groups if all(isinstance(x, int) for x in (t_out, k, c_in, c_out, groups)) else macs / groups


def linear_macs(n_tokens: Any, d_in: Any, d_out: Any) -> Any:
    """MACs of a Linear applied to ``n_tokens`` rows."""
    return n_tokens * d_in * d_out


def attention_proj_macs(T: Any, d_model: Any, n_heads: Any, head_dim: Any) -> Any:
    """q, k, v and out projections: 4·T·D·h·d_h."""
    return 4 * T * d_model * n_heads * head_dim


def attention_matmul_macs(T: Any, n_heads: Any, head_dim: Any) -> Any:
    """QKᵀ plus AV: 2·T²·h·d_h (the quadratic term)."""
    return 2 * T * T * n_heads * head_dim


def attention_macs(T: Any, d_model: Any, n_heads: Any, head_dim: Any) -> Any:
    """Self-attention of one layer: 4·T·D·h·d_h + 2·T²·h·d_h (docs/methods.md §3)."""
    return attention_proj_macs(T, d_model, n_heads, head_dim) + attention_matmul_macs(T, n_heads, head_dim)


def gated_rel_pos_macs(T: Any, n_heads: Any, head_dim: Any, n_out: Any = 8) -> Any:
    """WavLM's gate: ``gru_rel_pos_linear`` (head_dim → 8) applied to every head of every frame."""
    return T * n_heads * head_dim * n_out


def ffn_macs(T: Any, d_model: Any, d_ff: Any) -> Any:
    """Feed-forward block: 2·T·D·F."""
    return 2 * T * d_model * d_ff


# ---------------------------------------------------------------------------------------------------------------
# whole-model breakdown


def _spec(model_or_spec: ArchSpec | nn.Module) -> ArchSpec:
    return model_or_spec if isinstance(model_or_spec, ArchSpec) else ArchSpec.from_model(model_or_spec)


def _conv_chain(convs: tuple[ConvSpec, ...], t: int) -> tuple[list[dict[str, Any]], int]:
    rows = []
    for c in convs:
        t_out = conv_out_len(t, c.kernel, c.stride, c.padding, c.dilation)
        if t_out <= 0:
            raise SpeechpruneError(f"input too short: conv {c.name} (k={c.kernel}, s={c.stride}) gets {t} frames")
        macs = conv1d_macs(t_out, c.kernel, c.c_in, c.c_out, c.groups)
        rows.append({"name": c.name, "t_in": t, "t_out": t_out, "macs": macs})
        t = t_out
    return rows, t


def _lin(lin: LinearSpec | None, tokens: int) -> int:
    return 0 if lin is None else linear_macs(tokens, lin.d_in, lin.d_out)


def whisper_windows(spec: ArchSpec, num_samples: int) -> int:
    """Number of fixed windows Whisper needs for a clip: 1 up to the window length (shorter clips are padded),
    then one per started window (long-form audio is processed in consecutive windows)."""
    assert spec.whisper_window is not None
    window_samples = round(spec.whisper_window.seconds * spec.sample_rate)
    return max(1, math.ceil(num_samples / window_samples))


def mac_breakdown(model_or_spec: ArchSpec | nn.Module, num_samples: int = 16_000) -> dict[str, Any]:
    """Analytic MACs of one clip of ``num_samples`` 16 kHz samples (batch size 1), per part and per term.

    Frame counts follow from the kernel/stride arithmetic of the actual convs. For Whisper the input is the fixed
    window (``mel_frames`` log-mel frames → ``max_source_positions`` encoder frames) whatever the clip length, and a
    clip longer than the window costs one window per started window (``windows``).
    Returns a JSON-ready dict: ``parts`` (keys of :data:`~speechprune.profile.arch.PARTS`), ``front_end_layers``,
    ``positional_layers``, ``layers`` (per layer: q/k/v/out, attn_qk/attn_av, gru_rel_pos, ffn_in/ffn_out, extra),
    ``head_terms``, ``total`` and ``per_second``.
    """
    spec = _spec(model_or_spec)
    if num_samples <= 0:
        raise SpeechpruneError(f"num_samples must be positive, got {num_samples}")
    notes = list(spec.notes)
    windows = 1
    t_in = num_samples
    if spec.whisper_window is not None:
        windows = whisper_windows(spec, num_samples)
        t_in = spec.whisper_window.mel_frames
        if windows > 1:
            notes.append(f"a {num_samples / spec.sample_rate:g} s clip needs {windows} Whisper windows")
    out = _one_pass(spec, t_in)
    if windows > 1:  # every term scales with the number of windows
        out["parts"] = {k: v * windows for k, v in out["parts"].items()}
        for key in ("front_end_layers", "positional_layers", "layers", "head_terms"):
            for row in out[key]:
                row.update({k: v * windows for k, v in row.items() if k in _SCALED})
    total = sum(out["parts"].values())
    seconds = num_samples / spec.sample_rate
    return {
        "convention": MAC_CONVENTION,
        "family": spec.family,
        "num_samples": num_samples,
        "seconds": seconds,
        "input_frames": t_in,
        "frames": out["frames"],
        "windows": windows if spec.whisper_window is not None else None,
        "parts": out["parts"],
        "front_end_layers": out["front_end_layers"],
        "positional_layers": out["positional_layers"],
        "layers": out["layers"],
        "head_terms": out["head_terms"],
        "total": total,
        "per_second": total / seconds,
        "notes": notes,
    }


def _one_pass(spec: ArchSpec, t_in: int) -> dict[str, Any]:
    """MACs of one forward of one clip (one Whisper window) whose front end sees ``t_in`` input frames."""
    front, T = _conv_chain(spec.front_end, t_in)
    if spec.whisper_window is not None and T != spec.whisper_window.max_source_positions:
        expected = spec.whisper_window.max_source_positions
        raise SpeechpruneError(f"Whisper front end gives {T} frames, expected {expected}")
    pos, _ = _conv_chain(spec.pos_convs, T)
    layers = [_layer_terms(layer, T) for layer in spec.layers]
    t_head, adapter_macs = T, 0
    if spec.adapter is not None:
        rows, t_head = _conv_chain(spec.adapter.convs, T)
        adapter_macs = _lin(spec.adapter.proj, T) + sum(r["macs"] for r in rows)
    head_terms = []
    if spec.head is not None:
        head_terms += [{"name": h.name, "tokens": t_head, "macs": _lin(h, t_head)} for h in spec.head.frame_linears]
        head_terms += [{"name": h.name, "tokens": 1, "macs": _lin(h, 1)} for h in spec.head.pooled_linears]
    parts = dict.fromkeys(PARTS, 0)
    parts["front_end"] = sum(r["macs"] for r in front)
    parts["feature_projection"] = _lin(spec.feature_projection, T)
    parts["positional"] = sum(r["macs"] for r in pos)
    parts["layers"] = sum(r["total"] for r in layers)
    parts["adapter"] = adapter_macs
    parts["head"] = sum(h["macs"] for h in head_terms)
    return {"frames": T, "parts": parts, "front_end_layers": front, "positional_layers": pos, "layers": layers,
            "head_terms": head_terms}


_SCALED = frozenset(
    ("macs", "total", "q", "k", "v", "out", "attn_qk", "attn_av", "gru_rel_pos", "ffn_in", "ffn_out", "extra",
     "attention", "ffn")
)


def _layer_terms(layer: Any, T: int) -> dict[str, Any]:
    a, f = layer.attention, layer.ffn
    # "layer" follows the one convention (1..L; its output is state i); "index" is the position in encoder.layers
    r: dict[str, Any] = {"layer": layer.index + 1, "index": layer.index, "name": layer.name}
    r["q"], r["k"], r["v"], r["out"] = (_lin(getattr(a, n), T) if a else 0 for n in ("q", "k", "v", "out"))
    r["attn_qk"] = T * T * a.q.d_out if a else 0  # h·d_h = q_proj.out_features
    r["attn_av"] = T * T * a.v.d_out if a else 0
    r["gru_rel_pos"] = (
        gated_rel_pos_macs(T, a.num_heads, a.gru_rel_pos.d_in, a.gru_rel_pos.d_out) if a and a.gru_rel_pos else 0
    )
    r["ffn_in"] = _lin(f.fc1, T) if f else 0
    r["ffn_out"] = _lin(f.fc2, T) if f else 0
    r["extra"] = sum(_lin(x, T) for x in layer.extra_linears)
    r["attention"] = r["q"] + r["k"] + r["v"] + r["out"] + r["attn_qk"] + r["attn_av"] + r["gru_rel_pos"]
    r["ffn"] = r["ffn_in"] + r["ffn_out"]
    r["total"] = r["attention"] + r["ffn"] + r["extra"]
    return r


def count_macs(model_or_spec: ArchSpec | nn.Module, num_samples: int = 16_000) -> int:
    """Total analytic MACs for one clip of ``num_samples`` samples (batch 1)."""
    return int(mac_breakdown(model_or_spec, num_samples)["total"])


def macs_per_second(model_or_spec: ArchSpec | nn.Module, seconds: float = 1.0) -> float:
    """MACs per second of audio for a clip of ``seconds`` (grows slowly with length through the T² attention term;
    for Whisper it is the window cost divided by the clip length)."""
    spec = _spec(model_or_spec)
    return float(mac_breakdown(spec, round(seconds * spec.sample_rate))["per_second"])
