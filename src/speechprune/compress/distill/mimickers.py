"""Small modules that stand in for a speech model's whole transformer stack (docs/methods.md §2c).

Every mimicker maps the front end's frame sequence ``B × T × D`` to ``B × T × D`` and exposes the output of each of
its blocks (``block_outputs``), so that stage 1 can regress the *first* block onto an intermediate teacher state and
the final output onto the teacher's last state.

* :class:`MLPBlock` — per frame ``Linear(D → h) → LayerNorm(h) → ReLU → Linear(h → D)`` (the paper's "linear"
  mimicker). Unlike the reference code, a 2-block mimicker gives each block its own LayerNorm (the reference shares
  one module between them, which ties two unrelated normalisations together).
* :class:`TransformerBlock` — one transformer encoder layer, batch-first, with ``D`` model width, ``nhead`` heads and
  a feed-forward of width ``h`` (the reference uses ``nn.TransformerEncoderLayer`` without ``batch_first``, so it
  attends over the batch axis; this one attends over time). The layer follows the teacher's own layer style:
  pre-norm with a final LayerNorm after the stack for Whisper and "stable layer norm" models, post-norm otherwise,
  GELU in both. Attention is written with plain matmuls (no fused kernels) so that the FLOP counter sees every
  multiply-add and the analytic MAC count can be checked exactly. Parameter names follow Whisper's encoder layer
  (``self_attn.{q,k,v,out}_proj``, ``fc1``, ``fc2``, ``self_attn_layer_norm``, ``final_layer_norm``); the key
  projection has no bias (as in Whisper: a key bias adds the same number to every score of a query and cancels
  in the softmax), which is what lets a Whisper student be saved as a stock transformers model.
* ``kind="none"`` — no block at all: the baseline that trains the task head directly on the front end's output
  (with the teacher's final LayerNorm where the teacher has one, because that is what its head was trained on).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from speechprune.errors import SpeechpruneError
from speechprune.portable.modeling_speechprune_student import (  # noqa: F401
    MLPBlock,
    MimickerStack,
    SelfAttention,
    TransformerBlock,
)

KINDS = ("mlp", "transformer", "none")


@dataclass
class MimickerSpec:
    """Shape of a mimicker. ``hidden`` is the MLP bottleneck or the transformer's feed-forward width."""

    kind: str = "mlp"
    hidden: int = 64
    blocks: int = 2
    d_model: int = 0
    nhead: int = 8
    norm_first: bool = True
    final_norm: bool = False

    def validate(self) -> "MimickerSpec":
        if self.kind not in KINDS:
            raise SpeechpruneError(f"mimicker must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "none":
            return self
        if not isinstance(self.hidden, int) or self.hidden <= 0:
            raise SpeechpruneError(f"hidden size must be a positive integer, got {self.hidden!r}")
        if self.blocks not in (1, 2):
            raise SpeechpruneError(f"a mimicker has 1 or 2 blocks, got {self.blocks!r}")
        if self.d_model <= 0:
            raise SpeechpruneError(f"d_model must be positive, got {self.d_model}")
        if self.kind == "transformer" and (self.nhead <= 0 or self.d_model % self.nhead):
            raise SpeechpruneError(f"nhead must divide the model width {self.d_model}, got {self.nhead}")
        return self

    @property
    def num_blocks(self) -> int:
        return 0 if self.kind == "none" else self.blocks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Mimicker(MimickerStack):
    """``blocks`` MLP or transformer blocks, then an optional LayerNorm (``final_norm``), built from a validated
    :class:`MimickerSpec`. The blocks are those of the standalone custom-code file that student folders carry
    (:mod:`speechprune.portable.modeling_speechprune_student`), so speechprune and plain transformers run the same
    code.

    ``forward`` returns ``(final, block_outputs)``: the (normed) output and the raw output of every block.
    """

    def __init__(self, spec: MimickerSpec) -> None:
        super().__init__(**spec.validate().to_dict())
        self.spec = spec


def mimicker_macs(spec: MimickerSpec, frames: int) -> int:
    """Analytic MACs of the mimicker on ``frames`` frames (one clip): Linears and the two attention matmuls
    (norms, activations and softmax are not MACs — the convention of :mod:`speechprune.profile.macs`)."""
    d, h, t = spec.d_model, spec.hidden, frames
    if spec.kind == "mlp":
        return spec.blocks * 2 * t * d * h
    if spec.kind == "transformer":
        per = 4 * t * d * d + 2 * t * t * d + 2 * t * d * h
        return spec.blocks * per
    return 0


def default_nhead(d_model: int, teacher_heads: int | None) -> int:
    """The teacher's head count when it divides ``d_model``, else the largest divisor of ``d_model`` ≤ 8."""
    if teacher_heads and d_model % teacher_heads == 0:
        return int(teacher_heads)
    return max(k for k in range(1, 9) if d_model % k == 0)


__all__ = ["KINDS", "MLPBlock", "Mimicker", "MimickerSpec", "SelfAttention", "TransformerBlock", "default_nhead",
           "mimicker_macs"]
