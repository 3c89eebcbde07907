"""Whisper log-mel features for a window that is not a whole number of seconds — needs only transformers.

transformers' ``WhisperFeatureExtractor`` derives ``n_samples = chunk_length * sampling_rate`` in ``__init__``; for
a window such as 1.5 s that is a float and padding fails (``pad_width must be of integral type``). This subclass
rounds it to whole samples. speechprune copies this file into the folder of a Whisper model with such a window;
whole-second windows get the stock class and need no custom code.
"""

from __future__ import annotations

from typing import Any

from transformers import WhisperFeatureExtractor


class WindowedWhisperFeatureExtractor(WhisperFeatureExtractor):
    def __init__(self, feature_size: int = 80, sampling_rate: int = 16000, hop_length: int = 160,
                 chunk_length: float = 30, **kwargs: Any) -> None:
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, hop_length=hop_length,
                         chunk_length=chunk_length, **kwargs)
        self.n_samples = int(round(chunk_length * sampling_rate))
        self.nb_max_frames = self.n_samples // hop_length
