"""Core data types shared by every stage.

An :class:`AudioDataset` is a list of :class:`AudioItem` with named label columns. Audio is decoded lazily (one
clip at a time) so that a dataset of hours never has to sit in memory; extraction caches the *features*, not the
audio.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speechprune.data.audio import TARGET_SAMPLING_RATE, load_item_audio
from speechprune.errors import DataError

__all__ = ["TARGET_SAMPLING_RATE", "AudioDataset", "AudioItem", "Segment"]


@dataclass(frozen=True)
class Segment:
    """A labelled time span inside a clip (e.g. a phone from an EmoDB ``.lablaut`` file), in seconds."""

    start: float
    end: float
    label: str


@dataclass
class AudioItem:
    """One clip: where its audio comes from, and its labels.

    Exactly one of ``path`` (a file on disk) or ``array`` (already decoded samples at ``sampling_rate``) is set.
    """

    key: str
    labels: dict[str, str] = field(default_factory=dict)
    group: str | None = None
    path: Path | None = None
    array: np.ndarray | None = None
    sampling_rate: int | None = None
    segments: list[Segment] | None = None


class AudioDataset:
    """A labelled collection of clips.

    ``label_columns`` names the label columns every item carries; ``group_column`` (optional) names the column
    used for group-aware splits (e.g. ``speaker`` for speaker-independent evaluation).
    """

    def __init__(
        self,
        items: Sequence[AudioItem],
        label_columns: Sequence[str],
        group_column: str | None = None,
        name: str = "dataset",
    ) -> None:
        self.items = list(items)
        self.label_columns = list(label_columns)
        self.group_column = group_column
        self.name = name
        for col in self.label_columns:
            for it in self.items:
                if col not in it.labels:
                    raise DataError(f"{name}: item {it.key!r} has no value for label column {col!r}")

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"AudioDataset({self.name!r}, n={len(self)}, labels={self.label_columns}, group={self.group_column})"

    def load_audio(self, index: int) -> np.ndarray:
        """Decode clip ``index`` to float32 mono at 16 kHz, validated (see :func:`speechprune.data.audio.load_item_audio`)."""
        return load_item_audio(self.items[index])

    def labels(self, column: str) -> list[str]:
        """The values of one label column, in item order."""
        if column not in self.label_columns:
            raise DataError(
                f"{self.name}: no label column {column!r}; available: {', '.join(self.label_columns) or '(none)'}"
            )
        return [it.labels[column] for it in self.items]

    def groups(self) -> list[str | None]:
        return [it.group for it in self.items]

    def subset(self, indices: Sequence[int], name: str | None = None) -> "AudioDataset":
        return AudioDataset(
            [self.items[i] for i in indices], self.label_columns, self.group_column, name or self.name
        )

    def fingerprint(self, *, labels: bool = True, segments: bool = True) -> str:
        """Identify the data for cache keys: item keys, (optionally) labels and groups, segments, and the audio.

        Files are identified by absolute path, size and modification time (cheap; a re-recorded file changes
        its mtime); in-memory arrays by a hash of their samples. Feature caches pass ``labels=False``: features
        do not depend on labels, so editing a label must not force a re-extraction.
        """
        h = hashlib.sha256()
        for it in self.items:
            h.update(it.key.encode())
            if labels:
                h.update(repr(sorted(it.labels.items())).encode())
                h.update(repr(it.group).encode())
            if segments and it.segments is not None:
                h.update(repr([(s.start, s.end, s.label) for s in it.segments]).encode())
            if it.path is not None:
                p = Path(it.path)
                try:
                    st = p.stat()
                    h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
                except OSError:
                    h.update(f"{p}:missing".encode())
            elif it.array is not None:
                a = np.ascontiguousarray(it.array)
                h.update(f"{a.dtype}{a.shape}{it.sampling_rate}".encode())
                h.update(a.tobytes())
        return h.hexdigest()[:16]
