"""Model adapters (one interface over wav2vec2, HuBERT, WavLM, data2vec-audio and the Whisper encoder), layer
surgery, loading and saving. See :mod:`speechprune.models.adapter` for the layer index convention."""

from speechprune.models.adapter import EncoderInputs, SpeechEncoder
from speechprune.models.loading import load_encoder, wrap_model
from speechprune.models.registry import SUPPORTED_FAMILIES

__all__ = ["SUPPORTED_FAMILIES", "EncoderInputs", "SpeechEncoder", "load_encoder", "wrap_model"]
