"""Labelled audio: loading (audiofolder, CSV/JSONL manifests, Hugging Face ``datasets``), decoding to 16 kHz
mono float32, validation, label columns, speaker groups, time-stamped segments, and spoken-word synthesis."""

from speechprune.data.types import AudioDataset, AudioItem, Segment

__all__ = ["AudioDataset", "AudioItem", "Segment"]
