"""The student's front ends: the teacher's own front end, run alone, one class per kind of model input.

Each answers the same small interface, so :class:`~speechprune.compress.distill.student.StudentClassifier`
never tests the family: :meth:`run` (model inputs → frames and the valid-frame mask), :meth:`prepare` (clips →
model inputs, exactly as the teacher's classifier prepares them), :meth:`frames_for`, :meth:`macs`,
:meth:`param_parts`, :meth:`dummy_inputs`, and ``from_config`` / ``from_teacher``. :func:`front_end_class` picks
the class from the family's input kind (:attr:`speechprune.models.family.Family.input_kind`).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import transformers

from speechprune.errors import SpeechpruneError
from speechprune.models.adapter import SpeechEncoder
from speechprune.models.registry import family_for
from speechprune.portable.modeling_speechprune_student import SSLFrontEnd as PortableSSLFrontEnd
from speechprune.portable.modeling_speechprune_student import WhisperFrontEnd as PortableWhisperFrontEnd
from speechprune.profile.macs import conv1d_macs, conv_out_len, linear_macs


class WhisperFrontEnd(PortableWhisperFrontEnd):
    """``conv1 → GELU → conv2 → GELU`` (B × mel × 2T → B × T × D) and the window's position table.

    Like every student front end it answers :meth:`run` (model inputs → frames, valid-frame mask),
    :meth:`prepare`, :meth:`frames_for`, :meth:`macs`, :meth:`param_parts` and :meth:`dummy_inputs`; Whisper's
    stock head averages over the whole window (``pool_all_frames``), and its fixed position table can be added
    back (``positional_table``). Its modules and forward pass are the standalone copy's (``portable/``); a wrong
    window raises :class:`~speechprune.errors.SpeechpruneError` here, ``ValueError`` there."""

    input_kind = "log_mel"
    pool_all_frames = True
    has_positions = True
    window_error = SpeechpruneError

    def conv_macs(self) -> int:
        t_mel = self.window_positions * 2
        t1 = conv_out_len(t_mel, 3, 1, 1)
        t2 = conv_out_len(t1, 3, 2, 1)
        return (conv1d_macs(t1, 3, self.conv1.in_channels, self.conv1.out_channels)
                + conv1d_macs(t2, 3, self.conv2.in_channels, self.conv2.out_channels))

    # --- the front-end interface (see the class docstring) -----------------------------------------------------
    @property
    def positional_table(self) -> torch.Tensor:
        return self.embed_positions

    @classmethod
    def from_config(cls, tc: dict[str, Any]) -> "WhisperFrontEnd":
        return cls(int(tc["num_mel_bins"]), int(tc["d_model"]), int(tc["max_source_positions"]))

    @classmethod
    def from_teacher(cls, teacher: SpeechEncoder) -> "WhisperFrontEnd":
        enc = teacher.encoder_module
        fe = cls(enc.conv1.in_channels, enc.conv1.out_channels, enc.embed_positions.num_embeddings)
        fe.conv1.load_state_dict(enc.conv1.state_dict())
        fe.conv2.load_state_dict(enc.conv2.state_dict())
        fe.embed_positions.data.copy_(enc.embed_positions.weight.data)
        return fe

    def run(self, input_features: torch.Tensor | None = None, input_values: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if input_features is None:
            raise SpeechpruneError("a Whisper student needs input_features (log-mel)")
        return self(input_features), None

    def prepare(self, arrays: list[np.ndarray], fe: Any, tc: dict[str, Any]) -> dict[str, torch.Tensor]:
        if fe is None:
            fe = transformers.WhisperFeatureExtractor(feature_size=int(tc["num_mel_bins"]), sampling_rate=16_000)
        window = self.window_positions * 320
        feats = fe(arrays, sampling_rate=16_000, max_length=window, padding="max_length", truncation=True,
                   return_tensors="pt")
        return {"input_features": feats["input_features"]}

    def frames_for(self, num_samples: int) -> int:
        return self.window_positions

    def macs(self, num_samples: int) -> tuple[int, int, int]:
        """(front-end MACs, feature-projection MACs, frames); the window's, whatever ``num_samples``."""
        return self.conv_macs(), 0, self.window_positions

    def param_parts(self) -> dict[str, int]:
        n = self.embed_positions.numel()
        return {"front_end": sum(p.numel() for p in self.parameters()) - n, "positional": n}

    def dummy_inputs(self, seconds: float, batch_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"input_features": torch.randn(batch_size, self.conv1.in_channels, self.window_positions * 2,
                                              generator=gen)}


class SSLFrontEnd(PortableSSLFrontEnd):
    """The wav2vec2-family CNN and feature projection (B × samples → B × T × D, plus the valid-frame mask); the
    interface of :class:`WhisperFrontEnd`, pooling over valid frames and without a position table. Its modules and
    forward pass are the standalone copy's (``portable/``), so a folder's custom code and speechprune compute alike."""

    input_kind = "waveform"
    pool_all_frames = False
    has_positions = False
    positional_table = None

    def conv_macs(self, num_samples: int) -> tuple[int, int]:
        """(CNN MACs, frames) for a clip of ``num_samples``."""
        t, macs = num_samples, 0
        for layer in self.feature_extractor.conv_layers:
            c = layer.conv
            t = conv_out_len(t, c.kernel_size[0], c.stride[0], c.padding[0], c.dilation[0])
            macs += conv1d_macs(t, c.kernel_size[0], c.in_channels, c.out_channels, c.groups)
        return macs, t

    # --- the front-end interface (see WhisperFrontEnd) ------------------------------------------------------
    @classmethod
    def from_config(cls, tc: dict[str, Any]) -> "SSLFrontEnd":
        cfg = transformers.AutoConfig.for_model(**{k: v for k, v in tc.items() if k not in ("transformers_version",)})
        cfg.num_hidden_layers = 0
        _, base_name = family_for(cfg.model_type).config_classes(cfg.model_type)
        base = getattr(transformers, base_name)(cfg)
        return cls(base.feature_extractor, base.feature_projection, list(cfg.conv_kernel), list(cfg.conv_stride))

    @classmethod
    def from_teacher(cls, teacher: SpeechEncoder) -> "SSLFrontEnd":
        base = teacher.encoder_module
        return cls(copy.deepcopy(base.feature_extractor), copy.deepcopy(base.feature_projection),
                   list(teacher.config.conv_kernel), list(teacher.config.conv_stride))

    def run(self, input_features: torch.Tensor | None = None, input_values: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if input_values is None:
            raise SpeechpruneError("a waveform student needs input_values (waveform)")
        return self(input_values, attention_mask)

    def prepare(self, arrays: list[np.ndarray], fe: Any, tc: dict[str, Any]) -> dict[str, torch.Tensor]:
        default = tc.get("feat_extract_norm", "group") == "layer"
        normalize = bool(getattr(fe, "do_normalize", default)) if fe is not None else default
        lengths = torch.tensor([len(a) for a in arrays])
        batch = np.zeros((len(arrays), int(lengths.max())), dtype=np.float32)
        for i, x in enumerate(arrays):
            if normalize:
                x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
            batch[i, : len(x)] = x
        mask = (torch.arange(batch.shape[1])[None, :] < lengths[:, None]).long()
        return {"input_values": torch.from_numpy(batch), "attention_mask": mask}

    def frames_for(self, num_samples: int) -> int:
        return self.conv_macs(num_samples)[1]

    def macs(self, num_samples: int) -> tuple[int, int, int]:
        front, t = self.conv_macs(num_samples)
        lin = self.feature_projection.projection
        return front, linear_macs(t, lin.in_features, lin.out_features), t

    def param_parts(self) -> dict[str, int]:
        return {"front_end": sum(p.numel() for p in self.parameters()), "positional": 0}

    def dummy_inputs(self, seconds: float, batch_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        n = round(seconds * 16_000)
        return {"input_values": torch.randn(batch_size, n, generator=gen),
                "attention_mask": torch.ones(batch_size, n, dtype=torch.long)}


#: The student front end for each kind of model input (see :attr:`speechprune.models.family.Family.input_kind`).
FRONT_ENDS: dict[str, type] = {"log_mel": WhisperFrontEnd, "waveform": SSLFrontEnd}


def front_end_class(family: str) -> type:
    """The student front-end class of a model family."""
    return FRONT_ENDS[family_for(family).input_kind]
