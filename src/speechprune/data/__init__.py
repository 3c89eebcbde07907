"""Labelled audio: loading (audiofolder, CSV/JSONL manifests, Hugging Face ``datasets``), decoding to 16 kHz
mono float32, validation, label columns, speaker groups, time-stamped segments, and spoken-word synthesis."""

from speechprune.data.sources import from_hf_dataset, load_audiofolder, load_data, load_manifest, write_audiofolder
from speechprune.data.types import AudioDataset, AudioItem, Segment

__all__ = [
    "AudioDataset", "AudioItem", "Segment", "from_hf_dataset", "load_audiofolder", "load_data", "load_manifest",
    "write_audiofolder",
]
