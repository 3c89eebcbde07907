"""The feature extractor that matches a shortened Whisper window.

Kept apart from :mod:`speechprune.models.whisper` (the adapter) so that saving a model (:mod:`speechprune.models.io`)
can build it without importing the adapter: the adapter itself saves through ``models.io``, and the import would
run in a circle.
"""

from __future__ import annotations

from typing import Any

#: Audio samples per encoder position: a 160-sample mel hop, and conv2 has stride 2.
SAMPLES_PER_POSITION = 2 * 160


def window_feature_extractor(fe: Any, positions: int) -> Any:
    """A copy of ``fe`` whose own padding (``chunk_length``, ``n_samples``, ``nb_max_frames``) is the encoder window
    of ``positions`` frames, so that a plain ``fe(audio)`` — what ``pipeline("audio-classification")`` calls —
    yields exactly the input the model expects. Whole-second windows give the stock ``WhisperFeatureExtractor``;
    others (e.g. 1.5 s) the standalone ``WindowedWhisperFeatureExtractor`` (the stock class cannot hold them)."""
    from transformers import WhisperFeatureExtractor

    from speechprune.portable.feature_extraction_speechprune_whisper import WindowedWhisperFeatureExtractor

    if fe is None:
        fe = WhisperFeatureExtractor()
    sr = int(fe.sampling_rate)
    samples = int(positions) * SAMPLES_PER_POSITION
    opts = {k: v for k, v in fe.to_dict().items() if k not in (
        "feature_extractor_type", "processor_class", "mel_filters", "n_samples", "nb_max_frames", "chunk_length",
        "auto_map")}
    if samples % sr == 0:
        return WhisperFeatureExtractor(**opts, chunk_length=samples // sr)
    return WindowedWhisperFeatureExtractor(**opts, chunk_length=samples / sr)
