"""Audio clips as a torch ``Dataset`` for training, and the collate function that prepares model inputs.

Collation runs the encoder's own input preparation (normalisation, padding, Whisper log-mel) so a batch from the
loader is already a dict of tensors that ``accelerate`` can move to any device. Clips are decoded once and kept
in memory when ``preload`` is on (the default for data sets that fit: training reads every clip each epoch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from speechprune.data.types import AudioDataset
from speechprune.errors import DataError
from speechprune.models.adapter import SpeechEncoder
from speechprune.models.classifier import classifier_inputs

PRELOAD_LIMIT_BYTES = 4 << 30


class ClipDataset(Dataset):
    """Items ``indices`` of ``dataset`` with integer targets for ``label`` (class order ``classes``)."""

    def __init__(
        self,
        dataset: AudioDataset,
        indices: Sequence[int],
        label: str,
        classes: Sequence[str],
        *,
        max_seconds: float | None = None,
        preload: bool = True,
    ) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.classes = [str(c) for c in classes]
        index = {c: k for k, c in enumerate(self.classes)}
        values = dataset.labels(label)
        unknown = sorted({values[i] for i in self.indices} - set(index))
        if unknown:
            raise DataError(f"{dataset.name}: label value(s) {unknown} of {label!r} are not classes of this model "
                            f"({', '.join(self.classes)})")
        self.targets = [index[values[i]] for i in self.indices]
        self.max_samples = None if max_seconds is None else int(round(max_seconds * 16_000))
        self._cache: dict[int, np.ndarray] | None = {} if preload else None
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[np.ndarray, int]:
        if self._cache is not None and k in self._cache:
            return self._cache[k], self.targets[k]
        wav = self.dataset.load_audio(self.indices[k])
        if self.max_samples is not None and len(wav) > self.max_samples:
            wav = wav[: self.max_samples]
        if self._cache is not None and self._cached_bytes + wav.nbytes <= PRELOAD_LIMIT_BYTES:
            self._cache[k] = wav
            self._cached_bytes += wav.nbytes
        return wav, self.targets[k]


class ClassifierCollate:
    """Turn ``[(waveform, target), …]`` into model keyword arguments plus ``labels``."""

    def __init__(self, encoder: SpeechEncoder) -> None:
        self.encoder = encoder

    def __call__(self, batch: list[tuple[np.ndarray, int]]) -> dict[str, torch.Tensor]:
        wavs = [w for w, _ in batch]
        kwargs = classifier_inputs(self.encoder, wavs)
        kwargs["labels"] = torch.tensor([t for _, t in batch], dtype=torch.long)
        return kwargs


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on ``seed`` and the epoch, so that an interrupted run resumed at an epoch
    boundary sees exactly the batches the uninterrupted run saw, and every process of a multi-process run draws
    the same order (accelerate then gives each process its share)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def split_model_inputs(batch: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
    """``(model kwargs, labels)`` from a collated batch."""
    kwargs = {k: v for k, v in batch.items() if k != "labels"}
    return kwargs, batch["labels"]
