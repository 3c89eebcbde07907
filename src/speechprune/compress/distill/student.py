"""The distilled student: the teacher's front end, a small mimicker instead of the transformer stack, and the
teacher's classification head — one ``nn.Module`` that runs from the same inputs as the teacher.

Where the student starts (docs/methods.md §2c):

* wav2vec 2.0 / HuBERT / WavLM / data2vec-audio — the output of ``feature_projection`` (CNN → LayerNorm → Linear
  512 → D), *before* the positional convolution (which, at ~4.7 M parameters and a 128-tap kernel, costs as much
  as a transformer layer and is part of what the mimicker replaces).
* Whisper — ``GELU(conv2(GELU(conv1(log-mel))))``, before the sinusoidal position table is added. The student
  **adds the table back by default** (``positions=True``): it is a fixed, untrained sinusoid that costs no
  multiply-add (an element-wise add), the teacher's first layer sees exactly front end + table (state 0), and
  without it a per-frame mimicker has no way to tell frames apart — in particular the silent padding frames of the
  fixed window, whose teacher outputs differ by position and all enter the head's mean. ``positions=False``
  reproduces the reference set-up literally.

What the mimicker is trained to reproduce is what the head sees: the teacher's last state **with** the final
LayerNorm for Whisper and stable-layer-norm models (their stock heads read the final-normed output), the raw last
state for post-norm models (whose layers end in a LayerNorm anyway). The intermediate target is the raw state i.

Pooling follows the teacher's stock head: Whisper averages over the whole window, the wav2vec2 family over valid
frames (from the attention mask).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from speechprune.compress.distill.front_ends import front_end_class
from speechprune.compress.distill.mimickers import Mimicker, MimickerSpec, default_nhead, mimicker_macs
from speechprune.errors import AudioError, LayerIndexError, SpeechpruneError
from speechprune.models.adapter import SpeechEncoder
from speechprune.models.classifier import class_names, is_classifier
from speechprune.models.registry import family_for
from speechprune.profile.macs import linear_macs


@dataclass
class StudentOutput:
    logits: torch.Tensor
    final: torch.Tensor
    block_outputs: list[torch.Tensor] = field(default_factory=list)
    frame_mask: torch.Tensor | None = None


class StudentClassifier(nn.Module):
    """Front end → (+ positions) → mimicker → projector → mean pooling → classifier.

    ``forward`` takes the teacher's model inputs (``input_features`` for Whisper; ``input_values`` and optionally
    ``attention_mask`` otherwise), or ``front`` — an already computed front-end output (B × T × D, positions not
    added) with its ``frame_mask`` — which is how training runs from the cached teacher pass.
    """

    def __init__(self, config: dict[str, Any], front_end: nn.Module | None = None) -> None:
        super().__init__()
        self.config = copy.deepcopy(config)
        self.family = config["family"]
        self.front_end = front_end if front_end is not None else build_front_end(config)
        self.use_positions = bool(config.get("positions", False)) and self.front_end.has_positions
        self.mimicker = Mimicker(MimickerSpec(**config["mimicker"]))
        d, p, c = config["mimicker"]["d_model"], config["projector_size"], len(config["classes"])
        self.projector = nn.Linear(d, p)
        self.classifier = nn.Linear(p, c)
        #: The input preparation (a transformers feature extractor, JSON-saved); see :meth:`prepare`.
        self.feature_extractor: Any = None

    # --- structure -------------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def spec(self) -> MimickerSpec:
        return self.mimicker.spec

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.projector.parameters(), *self.classifier.parameters()]

    # --- inputs ----------------------------------------------------------------------------------------------
    def prepare(self, waveforms: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """Model keyword arguments for 16 kHz mono float32 clips, prepared exactly as the teacher's classifier
        inputs (Whisper: log-mel padded/truncated to the window; wav2vec2 family: optional per-clip normalisation,
        zero padding and the attention mask, always passed so that pooling covers valid frames only)."""
        if len(waveforms) == 0:
            raise AudioError("empty batch: no waveforms to prepare")
        arrays = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waveforms]
        if any(len(a) == 0 for a in arrays):
            raise AudioError("zero-length clip in batch")
        return self.front_end.prepare(arrays, self.feature_extractor, self.config["teacher_config"])

    @torch.no_grad()
    def predict(self, waveforms: Sequence[np.ndarray]) -> torch.Tensor:
        """Logits (B × classes) for a batch of clips."""
        device = next(self.parameters()).device
        kwargs = {k: v.to(device) for k, v in self.prepare(waveforms).items()}
        return self.eval()(**kwargs).logits

    # --- forward ---------------------------------------------------------------------------------------------
    def front(self, input_features: torch.Tensor | None = None, input_values: torch.Tensor | None = None,
              attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Front-end output (positions not added) and the valid-frame mask (``None`` = every frame)."""
        return self.front_end.run(input_features, input_values, attention_mask)

    def mimic(self, front: torch.Tensor, frame_mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = front
        if self.use_positions:
            x = x + self.front_end.positional_table[: x.shape[1]]
        return self.mimicker(x, frame_mask)

    def head(self, hidden: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        h = self.projector(hidden)
        if frame_mask is None:
            pooled = h.mean(dim=1)
        else:
            m = frame_mask.to(h.dtype)[..., None]
            pooled = (h * m).sum(dim=1) / m.sum(dim=1)
        return self.classifier(pooled)

    def forward(self, input_features: torch.Tensor | None = None, input_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *, front: torch.Tensor | None = None,
                frame_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> StudentOutput:
        if front is None:
            front, frame_mask = self.front(input_features, input_values, attention_mask)
        final, outs = self.mimic(front, frame_mask)
        return StudentOutput(self.head(final, frame_mask), final, outs, frame_mask)

    # --- cost ------------------------------------------------------------------------------------------------
    def frames_for(self, num_samples: int) -> int:
        return self.front_end.frames_for(num_samples)

    def mac_breakdown(self, num_samples: int = 16_000) -> dict[str, Any]:
        """Analytic MACs of one clip (batch 1) per part, in the convention of :mod:`speechprune.profile.macs`
        (Whisper: its fixed window, whatever ``num_samples``)."""
        front, proj, t = self.front_end.macs(num_samples)
        mim = mimicker_macs(self.spec, t)
        head = linear_macs(t, self.projector.in_features, self.projector.out_features) + linear_macs(
            1, self.classifier.in_features, self.classifier.out_features)
        parts = {"front_end": front, "feature_projection": proj, "mimicker": mim, "head": head}
        return {"frames": t, "parts": parts, "total": sum(parts.values())}

    def param_breakdown(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        parts = {
            **self.front_end.param_parts(),
            "mimicker": count(self.mimicker),
            "head": count(self.projector) + count(self.classifier),
        }
        parts["total"] = sum(parts.values())
        return parts


# ---------------------------------------------------------------------------------------------------------------
# construction


def build_front_end(config: dict[str, Any]) -> nn.Module:
    """A freshly initialised front end of the right shape for ``config`` (weights come from the saved file)."""
    return front_end_class(config["family"]).from_config(config["teacher_config"])


def front_end_of(teacher: SpeechEncoder) -> nn.Module:
    """A copy of the teacher's front end as a student front end (exactly the teacher's weights)."""
    return front_end_class(teacher.family).from_teacher(teacher)


def student_config(
    teacher: SpeechEncoder,
    kind: str,
    hidden: int,
    blocks: int,
    *,
    nhead: int | None = None,
    positions: bool = True,
    intermediate: int | None = None,
) -> dict[str, Any]:
    """The JSON config of a student for ``teacher`` (checked: head present, sizes, intermediate index)."""
    if not is_classifier(teacher):
        raise SpeechpruneError(
            f"the teacher ({teacher.source or teacher.family}) has no classification head: stage 2 puts the teacher's "
            "task head on the mimicker, so distil from a fine-tuned classifier (`speechprune finetune` first)")
    if getattr(teacher.config, "use_weighted_layer_sum", False):
        raise SpeechpruneError("teachers whose head reads a weighted sum of all layers are not supported: the "
                               "mimicker replaces the stack and has no layers to weigh")
    if kind != "none" and (not isinstance(hidden, int) or isinstance(hidden, bool) or hidden <= 0):
        raise SpeechpruneError(f"hidden size must be a positive integer, got {hidden!r}")
    check_intermediate(teacher, intermediate, kind, blocks)
    d = teacher.hidden_size
    heads = getattr(teacher.config, "encoder_attention_heads", None) or getattr(teacher.config, "num_attention_heads",
                                                                                None)
    has_final = teacher.final_norm is not None
    spec = MimickerSpec(
        kind=kind, hidden=int(hidden), blocks=int(blocks) if kind != "none" else 0, d_model=d,
        nhead=int(nhead) if nhead else default_nhead(d, heads),
        norm_first=has_final,
        # a final LayerNorm where the teacher's head reads a final-normed output and the mimicker's output is not
        # already a linear map (the MLP ends in a Linear, like the reference)
        final_norm=has_final and kind in ("transformer", "none"),
    )
    if kind != "none":
        spec.validate()
    cfg = teacher.config.to_dict()
    cfg.pop("transformers_version", None)
    return {
        "format": "speechprune-student",
        "format_version": 1,
        "family": teacher.family,
        "teacher_config": cfg,
        "mimicker": spec.to_dict(),
        "positions": bool(positions) and front_end_class(teacher.family).has_positions,
        "classes": class_names(teacher),
        "projector_size": int(teacher.model.projector.out_features),
        "intermediate_state": intermediate,
        "teacher_layers": teacher.num_layers,
        "teacher_source": teacher.source,
    }


def check_intermediate(teacher: SpeechEncoder, intermediate: int | None, kind: str, blocks: int) -> None:
    if intermediate is None:
        return
    if kind == "none" or blocks < 2:
        raise SpeechpruneError("an intermediate target needs a mimicker with 2 blocks (its first block regresses it)")
    if not 1 <= intermediate < teacher.num_layers:
        raise LayerIndexError(
            f"intermediate teacher state {intermediate} is out of range for this {teacher.num_layers}-layer "
            f"{teacher.family} model: choose 1..{teacher.num_layers - 1} (state i = output of layer i; state "
            f"{teacher.num_layers} is the last-layer target already)")


def build_student(teacher: SpeechEncoder, config: dict[str, Any], *, seed: int = 0) -> StudentClassifier:
    """A student for ``teacher``: its front end and head copied exactly, a freshly initialised mimicker (``seed``)
    whose final LayerNorm, if any, starts from the teacher's."""
    torch.manual_seed(seed)
    student = StudentClassifier(config, front_end_of(teacher))
    student.projector.load_state_dict(teacher.model.projector.state_dict())
    student.classifier.load_state_dict(teacher.model.classifier.state_dict())
    if student.mimicker.final_norm is not None and teacher.final_norm is not None:
        student.mimicker.final_norm.load_state_dict(teacher.final_norm.state_dict())
    student.feature_extractor = copy.deepcopy(teacher.feature_extractor)
    return student.eval()


def teacher_stack_params(teacher: SpeechEncoder) -> dict[str, int]:
    """What the mimicker replaces: the transformer layers, the final norm, and for the wav2vec2 family the
    positional convolution and the encoder LayerNorm (Whisper's position table is kept by the student)."""
    count = lambda m: 0 if m is None else sum(p.numel() for p in m.parameters())  # noqa: E731
    mm = family_for(teacher.family).module_map(teacher.encoder_module)
    layers = count(teacher.layers)
    extra = count(teacher.final_norm)
    if mm.positional_kind == "conv":  # a positional conv is computed, and replaced; a fixed table is kept
        extra += sum(count(m) for m in mm.positional)
    if mm.encoder_norm is not None and mm.norm_position == "before_layers":
        extra += count(mm.encoder_norm)
    return {"layers": layers, "stack": layers + extra}
