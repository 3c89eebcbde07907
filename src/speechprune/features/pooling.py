"""Pooling frame-level states into the rows that analyses consume.

* ``mean`` — mean over the clip's valid frames (padding-aware). The default: a clip's vector does not depend on
  what it was batched with.
* ``mean-all`` — mean over all frames of the padded batch, padding included. This is what the reference papers
  did (clips padded to 1 s, no mask); offered to reproduce them.
* ``segment`` — one row per labelled time segment (e.g. EmoDB phones), the mean of the frames it covers.
* ``frames`` — every valid frame is a row (no pooling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from speechprune.data.types import Segment
from speechprune.errors import SpeechpruneError

POOLINGS = ("mean", "mean-all", "segment", "frames")


@dataclass
class PooledBatch:
    """Pooled rows of one batch: ``states`` is ``S × R × D`` (S selected states, R rows); ``item_index[r]`` is the
    batch position of row r's clip; ``segments[r]`` its segment (segment pooling only)."""

    states: torch.Tensor
    item_index: torch.Tensor
    segments: list[Segment] | None = None
    dropped_segments: int = 0


def valid_frame_mask(frame_lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``B × T`` boolean mask of frames that hold speech (on the device of ``frame_lengths``)."""
    return torch.arange(num_frames, device=frame_lengths.device)[None, :] < frame_lengths[:, None]


def pool_states(
    states: Sequence[torch.Tensor],
    frame_lengths: torch.Tensor,
    pooling: str,
    frame_rate: float,
    segments: Sequence[Sequence[Segment] | None] | None = None,
) -> PooledBatch:
    """Pool each ``B × T × D`` state the same way and stack them to ``S × R × D`` (on the states' device;
    ``frame_lengths`` may live on the CPU, ``item_index`` always does)."""
    if pooling not in POOLINGS:
        raise SpeechpruneError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    return pool_stacked(torch.stack(list(states)), frame_lengths, pooling, frame_rate, segments)


def pool_stacked(
    stacked: torch.Tensor,
    frame_lengths: torch.Tensor,
    pooling: str,
    frame_rate: float,
    segments: Sequence[Sequence[Segment] | None] | None = None,
) -> PooledBatch:
    """:func:`pool_states` of states already stacked to ``S × B × T × D`` (any memory layout; feature extraction
    fills one buffer as the layers produce the states)."""
    s, b, t, d = stacked.shape
    lengths = frame_lengths.to(stacked.device).clamp(max=t)
    if pooling == "mean-all":
        return PooledBatch(stacked.mean(dim=2), torch.arange(b))
    if pooling == "mean":
        if (lengths <= 0).any():
            raise SpeechpruneError("a clip has no valid frames; it is too short for this model")
        mask = valid_frame_mask(lengths, t).to(stacked.dtype)  # B × T
        summed = torch.einsum("sbtd,bt->sbd", stacked, mask)
        return PooledBatch(summed / lengths.to(stacked.dtype)[None, :, None], torch.arange(b))
    if pooling == "frames":
        mask = valid_frame_mask(lengths, t)
        rows = stacked[:, mask]  # S × R × D, clip-major then time
        return PooledBatch(rows, torch.arange(b).repeat_interleave(lengths.cpu()))
    return _pool_segments(stacked, lengths, frame_rate, segments)


def segment_frames(seg: Segment, frame_rate: float, valid: int) -> tuple[int, int] | None:
    """Frame range ``[start, end)`` covered by a segment, clipped to the valid frames; ``None`` if empty.

    A segment covers every frame that overlaps it; a segment shorter than one frame still gets the frame it
    starts in, so short phones are not lost.
    """
    start = math.floor(seg.start * frame_rate + 1e-9)
    end = max(start + 1, math.ceil(seg.end * frame_rate - 1e-9))
    end = min(end, valid)
    return (start, end) if start < end else None


def _pool_segments(
    stacked: torch.Tensor,
    lengths: torch.Tensor,
    frame_rate: float,
    segments: Sequence[Sequence[Segment] | None] | None,
) -> PooledBatch:
    if segments is None or any(s is None for s in segments):
        raise SpeechpruneError("segment pooling needs segments for every clip (e.g. load EmoDB with segments_dir)")
    rows, owners, kept = [], [], []
    dropped = 0
    for b, segs in enumerate(segments):
        for seg in segs or []:
            span = segment_frames(seg, frame_rate, int(lengths[b]))
            if span is None:
                dropped += 1
                continue
            rows.append(stacked[:, b, span[0] : span[1]].mean(dim=1))
            owners.append(b)
            kept.append(seg)
    if not rows:
        empty = stacked.new_zeros((stacked.shape[0], 0, stacked.shape[-1]))
        return PooledBatch(empty, torch.zeros(0, dtype=torch.long), [], dropped)
    return PooledBatch(torch.stack(rows, dim=1), torch.tensor(owners), kept, dropped)
