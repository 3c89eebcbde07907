"""Greedy Whisper transcription with the decoder KV cache.

Why our own loop instead of ``model.generate``: HF's Whisper ``generate`` needs many Whisper-specific
generation-config fields (language tables, timestamp rules, long-form settings) and changes behaviour between
transformers releases. Proving that a converted or pruned model still *recognises speech* only needs the plain
OpenAI greedy recipe: a fixed decoder prompt, argmax each step, the checkpoint's token suppression lists, stop at
end-of-text. The prompt and end token come from ``generation_config.decoder_prompt_ids`` / ``eos_token_id``,
written by :func:`speechprune.importers.ct2.convert_ct2_whisper`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from speechprune.errors import AudioError, SpeechpruneError

if TYPE_CHECKING:
    import torch

__all__ = ["SAMPLING_RATE", "MAX_SECONDS", "WhisperDecoding", "WhisperAsr", "load_whisper_asr", "transcribe"]

SAMPLING_RATE = 16_000
MAX_SECONDS = 30.0  # Whisper's fixed input window; longer audio would be silently truncated


@dataclass
class WhisperDecoding:
    """What the greedy loop needs besides the network: prompt, end token and token suppression lists."""

    prompt_ids: list[int]
    eos_token_id: int
    suppress_tokens: list[int] = field(default_factory=list)
    begin_suppress_tokens: list[int] = field(default_factory=list)
    max_target_positions: int = 448

    @classmethod
    def from_model(cls, model: Any) -> WhisperDecoding:
        """Read the decoding recipe stored by the converter; fail clearly if the model was not converted by us."""
        gen = getattr(model, "generation_config", None)
        prompt = getattr(gen, "decoder_prompt_ids", None)
        eos = getattr(gen, "eos_token_id", None)
        if not prompt or eos is None:
            raise SpeechpruneError(
                "the model's generation_config has no decoder_prompt_ids/eos_token_id; convert it with "
                "`speechprune import-ct2` or pass prompt_ids= and eos_token_id= to transcribe()"
            )
        return cls(
            prompt_ids=[int(t) for t in prompt],
            eos_token_id=int(eos if not isinstance(eos, (list, tuple)) else eos[0]),
            suppress_tokens=[int(t) for t in (getattr(gen, "suppress_tokens", None) or [])],
            begin_suppress_tokens=[int(t) for t in (getattr(gen, "begin_suppress_tokens", None) or [])],
            max_target_positions=int(model.config.max_target_positions),
        )


@dataclass
class WhisperAsr:
    """A model with the tokenizer, feature extractor and decoding recipe that belong to it."""

    model: Any
    tokenizer: Any
    feature_extractor: Any
    decoding: WhisperDecoding


def load_whisper_asr(model_dir: str | os.PathLike[str]) -> WhisperAsr:
    """Load a folder written by ``convert_ct2_whisper`` (or any HF Whisper folder with a decoding prompt)."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise SpeechpruneError(f"{folder / 'config.json'} not found: not a Hugging Face model folder")
    model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
    return WhisperAsr(model, tokenizer, feature_extractor, WhisperDecoding.from_model(model))


def _as_asr(source: Any, tokenizer: Any, feature_extractor: Any) -> WhisperAsr:
    """Accept a folder, a :class:`WhisperAsr`-like bundle (e.g. ``ConvertedWhisper``) or a bare model."""
    if isinstance(source, (str, os.PathLike)):
        asr = load_whisper_asr(source)
    elif hasattr(source, "model") and hasattr(source, "tokenizer") and hasattr(source, "feature_extractor"):
        decoding = getattr(source, "decoding", None) or WhisperDecoding.from_model(source.model)
        asr = WhisperAsr(source.model, source.tokenizer, source.feature_extractor, decoding)
    else:
        asr = _bare_model_asr(source, tokenizer)
    if tokenizer is not None:
        asr.tokenizer = tokenizer
    if feature_extractor is not None:
        asr.feature_extractor = feature_extractor
    return asr


def _bare_model_asr(model: Any, tokenizer: Any) -> WhisperAsr:
    """A model object alone: its tokenizer must be passed or live in the folder it was loaded from."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    folder = Path(getattr(model, "name_or_path", "") or "")
    if tokenizer is None:
        if not (folder / "tokenizer.json").is_file():
            raise SpeechpruneError(
                "transcribe() got a model without a tokenizer: pass tokenizer=, or load the model from a folder "
                "written by `speechprune import-ct2`"
            )
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if (folder / "preprocessor_config.json").is_file():
        fe = WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
    else:
        fe = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins, sampling_rate=SAMPLING_RATE)
    return WhisperAsr(model, tokenizer, fe, WhisperDecoding.from_model(model))


def _check_waveforms(waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
    """16 kHz mono float32 clips of at most 30 s; anything else is an :class:`AudioError` naming the clip."""
    checked = []
    for index, wav in enumerate(waveforms):
        arr = np.asarray(wav, dtype=np.float32)
        if arr.ndim != 1:
            raise AudioError(f"waveform {index} has shape {arr.shape}; expected 1-D mono samples")
        if arr.size == 0:
            raise AudioError(f"waveform {index} is empty")
        if not np.isfinite(arr).all():
            raise AudioError(f"waveform {index} contains NaN or infinite samples")
        seconds = arr.size / SAMPLING_RATE
        if seconds > MAX_SECONDS:
            raise AudioError(f"waveform {index} lasts {seconds:.1f} s; Whisper transcribes at most {MAX_SECONDS:.0f} s")
        checked.append(arr)
    return checked


def transcribe(
    model_dir_or_model: Any,
    waveforms: Sequence[np.ndarray],
    batch_size: int = 8,
    max_new_tokens: int = 128,
    *,
    tokenizer: Any = None,
    feature_extractor: Any = None,
    prompt_ids: Sequence[int] | None = None,
    eos_token_id: int | None = None,
) -> list[str]:
    """Transcribe 16 kHz mono float32 clips (≤ 30 s each) with greedy decoding; returns one string per clip.

    ``model_dir_or_model`` is a converted folder, a ``WhisperAsr``/``ConvertedWhisper`` bundle, or a
    ``WhisperForConditionalGeneration`` (whose tokenizer is then found in its folder or passed). Special tokens
    and timestamps are removed from the text.
    """
    import torch

    if batch_size < 1 or max_new_tokens < 1:
        raise SpeechpruneError("batch_size and max_new_tokens must be at least 1")
    clips = _check_waveforms(waveforms)
    asr = _as_asr(model_dir_or_model, tokenizer, feature_extractor)
    if prompt_ids is not None:
        asr.decoding.prompt_ids = [int(t) for t in prompt_ids]
    if eos_token_id is not None:
        asr.decoding.eos_token_id = int(eos_token_id)
    texts: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(clips), batch_size):
            features = _features(asr, clips[start : start + batch_size])
            for ids in greedy_decode(asr.model, features, asr.decoding, max_new_tokens):
                texts.append(_decode_text(asr.tokenizer, ids, asr.decoding.eos_token_id))
    return texts


def _features(asr: WhisperAsr, clips: list[np.ndarray]) -> torch.Tensor:
    param = next(asr.model.parameters())
    feats = asr.feature_extractor(clips, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features
    return feats.to(device=param.device, dtype=param.dtype)


def greedy_decode(
    model: Any, features: torch.Tensor, decoding: WhisperDecoding, max_new_tokens: int
) -> list[list[int]]:
    """Greedy decoding of a batch of log-mel features; returns generated ids per clip (without the prompt,
    up to but excluding end-of-text). The encoder runs once; the decoder reuses its self- and cross-attention
    KV cache, so each step costs one token."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    batch = features.shape[0]
    budget = min(max_new_tokens, decoding.max_target_positions - len(decoding.prompt_ids))
    encoder_out = BaseModelOutput(last_hidden_state=model.get_encoder()(features).last_hidden_state)
    prompt = torch.tensor([decoding.prompt_ids] * batch, device=features.device)
    out = model(encoder_outputs=encoder_out, decoder_input_ids=prompt, use_cache=True)
    eos = decoding.eos_token_id
    finished = torch.zeros(batch, dtype=torch.bool, device=features.device)
    steps: list[torch.Tensor] = []
    for step in range(budget):
        logits = _suppress(out.logits[:, -1, :].float(), decoding, first=step == 0)
        token = torch.where(finished, torch.full_like(finished, eos, dtype=torch.long), logits.argmax(-1))
        steps.append(token)
        finished |= token == eos
        if bool(finished.all()):
            break
        out = model(encoder_outputs=encoder_out, decoder_input_ids=token[:, None],
                    past_key_values=out.past_key_values, use_cache=True)
    generated = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(batch)]
    return [row[: row.index(eos)] if eos in row else row for row in generated]


def _suppress(logits: torch.Tensor, decoding: WhisperDecoding, first: bool) -> torch.Tensor:
    """The checkpoint's suppression lists (non-speech symbols; blank/end-of-text at the first step)."""
    vocab = logits.shape[-1]
    banned = [t for t in decoding.suppress_tokens if t < vocab]
    if first:
        banned += [t for t in decoding.begin_suppress_tokens if t < vocab]
    if banned:
        logits[:, banned] = float("-inf")
    return logits


def _decode_text(tokenizer: Any, ids: list[int], eos: int) -> str:
    """Whisper puts every special token (end-of-text, prompt tokens, timestamps) at ids >= end-of-text."""
    text_ids = [t for t in ids if t < eos]
    return tokenizer.decode(text_ids, skip_special_tokens=True).strip()
