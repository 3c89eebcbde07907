"""Speech recognition checks: greedy Whisper transcription and word error rate.

Why a pruning toolkit needs ASR: representation probes can miss damage that a full encoder-decoder notices, so a
converted or pruned Whisper must still *transcribe* real speech; :func:`transcribe` + :func:`word_error_rate` are
that end-to-end check.
"""

from speechprune.asr.transcribe import WhisperAsr, WhisperDecoding, load_whisper_asr, transcribe
from speechprune.asr.wer import UtteranceWer, WerResult, normalize_text, number_to_words, word_error_rate

__all__ = [
    "WhisperAsr",
    "WhisperDecoding",
    "load_whisper_asr",
    "transcribe",
    "UtteranceWer",
    "WerResult",
    "normalize_text",
    "number_to_words",
    "word_error_rate",
]
