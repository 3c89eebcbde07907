"""A speechprune distilled student in Hugging Face custom-code form — this file needs only torch and transformers.

speechprune copies it (and ``configuration_speechprune_student.py``) into every distilled-student folder that has no
stock transformers equivalent (MLP mimickers, wav2vec2-family students) and points ``config.json``'s ``auto_map``
at it, so that plain transformers loads the folder::

    from transformers import AutoModelForAudioClassification, pipeline
    model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True)
    clf = pipeline("audio-classification", model=folder, trust_remote_code=True)

The student is the teacher's front end (Whisper: ``conv1 → GELU → conv2 → GELU`` + the window's position table;
wav2vec2 family: CNN → feature projection), a small *mimicker* in place of the transformer stack, and the teacher's
head (projector → mean pooling → classifier). speechprune builds its own student from the same blocks
(``speechprune.compress.distill``), so both give the same numbers.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import transformers
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_speechprune_student import SpeechpruneStudentConfig

_BASE_CLASSES = {
    "wav2vec2": "Wav2Vec2Model",
    "hubert": "HubertModel",
    "wavlm": "WavLMModel",
    "data2vec-audio": "Data2VecAudioModel",
}


# ---------------------------------------------------------------------------------------------------------------
# mimicker blocks


class MLPBlock(nn.Module):
    """``Linear(D → h) → LayerNorm(h) → ReLU → Linear(h → D)``, applied to every frame."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


class SelfAttention(nn.Module):
    """Multi-head self-attention over time (batch-first), with explicit matmuls."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.nhead = nhead
        self.head_dim = d_model // nhead
        self.scaling = self.head_dim ** -0.5
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        shape = (b, t, self.nhead, self.head_dim)
        q = (self.q_proj(x) * self.scaling).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3))
        if key_mask is not None:  # B × T, True = a frame that holds speech
            scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, d)
        return self.out_proj(out)


class TransformerBlock(nn.Module):
    """One encoder layer: self-attention + feed-forward of width ``hidden`` (GELU), pre- or post-norm."""

    def __init__(self, d_model: int, nhead: int, hidden: int, norm_first: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = SelfAttention(d_model, nhead)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(nn.functional.gelu(self.fc1(x))))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), key_mask))
            return x + self.dropout(self._ffn(self.final_layer_norm(x)))
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, key_mask)))
        return self.final_layer_norm(x + self.dropout(self._ffn(x)))


class MimickerStack(nn.Module):
    """``blocks`` MLP or transformer blocks (``kind``: mlp | transformer | none), then an optional LayerNorm.

    ``forward`` returns ``(final, block_outputs)``: the (normed) output and the raw output of every block.
    """

    def __init__(self, kind: str = "mlp", hidden: int = 64, blocks: int = 2, d_model: int = 0, nhead: int = 8,
                 norm_first: bool = True, final_norm: bool = False) -> None:
        super().__init__()
        if kind == "mlp":
            self.blocks = nn.ModuleList([MLPBlock(d_model, hidden) for _ in range(blocks)])
        elif kind == "transformer":
            self.blocks = nn.ModuleList([TransformerBlock(d_model, nhead, hidden, norm_first) for _ in range(blocks)])
        else:
            self.blocks = nn.ModuleList()
        self.final_norm = nn.LayerNorm(d_model) if final_norm else None

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outs = []
        for block in self.blocks:
            x = block(x, key_mask) if isinstance(block, TransformerBlock) else block(x)
            outs.append(x)
        final = self.final_norm(x) if self.final_norm is not None else x
        return final, outs


# ---------------------------------------------------------------------------------------------------------------
# front ends


class WhisperFrontEnd(nn.Module):
    """``conv1 → GELU → conv2 → GELU`` (B × mel × 2T → B × T × D) and the window's position table."""

    #: What a wrong number of log-mel frames raises (speechprune's own subclass raises its error type).
    window_error: type[Exception] = ValueError

    def __init__(self, num_mel_bins: int, d_model: int, positions: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(num_mel_bins, d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d_model, d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Parameter(torch.zeros(positions, d_model), requires_grad=False)

    @property
    def window_positions(self) -> int:
        return int(self.embed_positions.shape[0])

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        expected = self.window_positions * 2
        if input_features.shape[-1] != expected:
            raise self.window_error(f"this Whisper student expects {expected} log-mel frames (its window), got "
                                    f"{input_features.shape[-1]}")
        x = nn.functional.gelu(self.conv1(input_features.to(self.conv1.weight.dtype)))
        x = nn.functional.gelu(self.conv2(x))
        return x.permute(0, 2, 1)


class SSLFrontEnd(nn.Module):
    """The wav2vec2-family CNN and feature projection (B × samples → B × T × D, plus the valid-frame mask)."""

    def __init__(self, feature_extractor: nn.Module, feature_projection: nn.Module, kernels: list[int],
                 strides: list[int]) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.feature_projection = feature_projection
        self.kernels = [int(k) for k in kernels]
        self.strides = [int(s) for s in strides]

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        n = sample_lengths.long()
        for k, s in zip(self.kernels, self.strides):
            n = torch.div(n - k, s, rounding_mode="floor") + 1
        return n.clamp(min=0)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.feature_extractor(input_values).transpose(1, 2)
        hidden = self.feature_projection(feats)
        if isinstance(hidden, tuple):  # wav2vec2/WavLM/data2vec-audio also return the normed features; HuBERT not
            hidden = hidden[0]
        mask = None
        if attention_mask is not None:
            lengths = self.frame_lengths(attention_mask.sum(-1))
            mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
        return hidden, mask


def build_front_end(student: dict[str, Any]) -> nn.Module:
    """A freshly initialised front end of the right shape for a student description (weights come from the file)."""
    tc = student["teacher_config"]
    if student["family"] == "whisper":
        return WhisperFrontEnd(int(tc["num_mel_bins"]), int(tc["d_model"]), int(tc["max_source_positions"]))
    cfg = transformers.AutoConfig.for_model(**{k: v for k, v in tc.items() if k not in ("transformers_version",)})
    cfg.num_hidden_layers = 0
    base = getattr(transformers, _BASE_CLASSES[student["family"]])(cfg)
    return SSLFrontEnd(base.feature_extractor, base.feature_projection, list(cfg.conv_kernel), list(cfg.conv_stride))


def pooled_logits(projector: nn.Module, classifier: nn.Module, hidden: torch.Tensor,
                  frame_mask: torch.Tensor | None) -> torch.Tensor:
    """The teacher's head: projector → mean over frames (valid frames only when a mask is given) → classifier."""
    h = projector(hidden)
    if frame_mask is None:
        pooled = h.mean(dim=1)
    else:
        m = frame_mask.to(h.dtype)[..., None]
        pooled = (h * m).sum(dim=1) / m.sum(dim=1)
    return classifier(pooled)


# ---------------------------------------------------------------------------------------------------------------
# the transformers model


class SpeechpruneStudentForAudioClassification(PreTrainedModel):
    """Front end → (+ positions) → mimicker → projector → mean pooling → classifier, as a transformers model.

    Inputs are those of the teacher's classifier: ``input_features`` (Whisper log-mel, padded to the window) or
    ``input_values`` + ``attention_mask`` (wav2vec2 family).
    """

    config_class = SpeechpruneStudentConfig
    base_model_prefix = "speechprune_student"
    main_input_name = "input_values"

    def __init__(self, config: SpeechpruneStudentConfig) -> None:
        super().__init__(config)
        s = copy.deepcopy(config.student)
        self.family = s["family"]
        if self.family == "whisper":
            self.main_input_name = "input_features"
        self.use_positions = bool(s.get("positions", False)) and self.family == "whisper"
        self.front_end = build_front_end(s)
        self.mimicker = MimickerStack(**s["mimicker"])
        d, p, c = s["mimicker"]["d_model"], s["projector_size"], len(s["classes"])
        self.projector = nn.Linear(d, p)
        self.classifier = nn.Linear(p, c)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:  # every weight comes from the checkpoint
        pass

    def forward(self, input_features: torch.Tensor | None = None, input_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs: Any) -> SequenceClassifierOutput:
        if self.family == "whisper":
            if input_features is None:
                raise ValueError("a Whisper student needs input_features (log-mel)")
            front, mask = self.front_end(input_features), None
        else:
            if input_values is None:
                raise ValueError(f"a {self.family} student needs input_values (waveform)")
            front, mask = self.front_end(input_values, attention_mask)
        if self.use_positions:
            front = front + self.front_end.embed_positions[: front.shape[1]]
        final, _ = self.mimicker(front, mask)
        logits = pooled_logits(self.projector, self.classifier, final, mask)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
