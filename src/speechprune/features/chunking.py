"""Long clips in bounded memory: a clip longer than ``chunk_seconds`` is encoded in consecutive chunks.

Memory of one forward pass grows with the clip (every state is T × D, attention T² per head): a 10-minute clip took
4.8 GB on the *tiny* wav2vec2. A clip above the chunk length (default :data:`DEFAULT_CHUNK_SECONDS`; Whisper: its
encoder window, the longest input it can see) is therefore split into chunks, each encoded on its own, so memory
is that of one chunk whatever the clip's length.

How chunks are pooled:

* ``mean`` — the mean over *all* valid frames of all chunks (chunk sums divided by the total frame count): exactly
  the pooling of one pass over those frames. The frames themselves see only their own chunk as context (a
  transformer attends over its input), so for a long clip they differ from those of an (unaffordable) single pass;
  clips up to the chunk length are encoded in one pass as before, bit for bit.
* ``frames`` — the chunks' frames, concatenated in time order.
* ``mean-all`` and ``segment`` — refused for a clip above the limit (``mean-all`` averages the padding of a batch,
  and segment times do not map exactly onto chunk frames); the error names the clip, the limit and the flag that
  lifts it (``--chunk-seconds``, at the price of memory).

Clips of a batch that fit are encoded together, as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from speechprune.data.cliplen import clip_samples, min_samples
from speechprune.errors import SpeechpruneError
from speechprune.features.pooling import PooledBatch, pool_states

DEFAULT_CHUNK_SECONDS = 30.0
SR = 16_000


def chunk_limit(encoder: Any, chunk_seconds: float | None) -> int | None:
    """Longest clip (samples) encoded in one pass; ``None`` = no limit."""
    limit = None if chunk_seconds is None else int(round(float(chunk_seconds) * SR))
    window = getattr(encoder, "window_seconds", None)
    if getattr(encoder, "has_fixed_window", False) and window:
        w = int(round(float(window) * SR))
        limit = w if limit is None else min(limit, w)
    return limit


def long_clips(dataset: Any, limit: int | None) -> list[int]:
    """Indices of clips longer than ``limit`` (lengths from the file headers; no decoding)."""
    if limit is None:
        return []
    return [i for i, it in enumerate(dataset.items) if (clip_samples(it) or 0) > limit]


def check_chunkable(dataset: Any, encoder: Any, pooling: str, chunk_seconds: float | None) -> list[int]:
    """Refuse, before any compute, a long clip that ``pooling`` cannot chunk; return the long clips' indices."""
    limit = chunk_limit(encoder, chunk_seconds)
    longs = long_clips(dataset, limit)
    if longs and pooling in ("mean-all", "segment"):
        it = dataset.items[longs[0]]
        n = clip_samples(it) or 0
        raise SpeechpruneError(
            f"{it.path or it.key}: clip is {n / SR:.1f} s long, above the {limit / SR:g} s that are encoded in one "
            f"pass ({len(longs)} such clip(s)); {pooling!r} pooling cannot be computed chunk by chunk — use "
            "--pooling mean or frames, or raise the limit with --chunk-seconds (memory grows with it)")
    return longs


def pool_batch(encoder: Any, waves: list[np.ndarray], options: dict[str, Any], segments: Any) -> PooledBatch:
    """Encode and pool one batch like the plain path, chunking the clips above the limit."""
    limit = chunk_limit(encoder, options.get("chunk_seconds"))
    long = [b for b, w in enumerate(waves) if limit is not None and len(w) > limit]
    if not long:
        return _plain(encoder, waves, options, segments)
    pooling = options["pooling"]
    if pooling not in ("mean", "frames"):
        raise SpeechpruneError(f"a clip above {limit / SR:g} s cannot be pooled with {pooling!r}; raise --chunk-seconds")
    short = [b for b in range(len(waves)) if b not in long]
    per_clip: dict[int, torch.Tensor] = {}  # b -> S × D (mean) or S × T × D (frames)
    if short:
        pooled = _plain(encoder, [waves[b] for b in short], options, None)
        for k, b in enumerate(short):
            rows = (pooled.item_index == k).nonzero().flatten()
            per_clip[b] = pooled.states[:, rows[0]] if pooling == "mean" else pooled.states[:, rows]
    for b in long:
        per_clip[b] = _chunked(encoder, waves[b], limit, options)
    if pooling == "mean":
        return PooledBatch(torch.stack([per_clip[b] for b in range(len(waves))], dim=1), torch.arange(len(waves)))
    parts = [per_clip[b] for b in range(len(waves))]
    owners = torch.cat([torch.full((p.shape[1],), b, dtype=torch.long) for b, p in enumerate(parts)])
    return PooledBatch(torch.cat(parts, dim=1), owners)


def _plain(encoder: Any, waves: list[np.ndarray], options: dict[str, Any], segments: Any) -> PooledBatch:
    inputs = encoder.prepare(waves)
    hs = encoder.hidden_states(inputs, layers=options["layers"], dtype=options["dtype"], device=options["device"],
                               final_norm=options["final_norm"])
    return pool_states(hs, inputs.frame_lengths, options["pooling"], encoder.frame_rate, segments)


def _chunked(encoder: Any, wave: np.ndarray, limit: int, options: dict[str, Any]) -> torch.Tensor:
    bounds = list(range(0, len(wave), limit))
    if len(wave) - bounds[-1] < min_samples(encoder) and len(bounds) > 1:
        bounds.pop()  # a tail too short for one frame joins the previous chunk
    total, count, frames = None, 0, []
    for k, start in enumerate(bounds):
        end = bounds[k + 1] if k + 1 < len(bounds) else len(wave)
        inputs = encoder.prepare([wave[start:end]])
        hs = encoder.hidden_states(inputs, layers=options["layers"], dtype=options["dtype"],
                                   device=options["device"], final_norm=options["final_norm"])
        n = int(inputs.frame_lengths[0].clamp(max=hs[0].shape[1]))
        stacked = torch.stack([h[0, :n].float().cpu() for h in hs])  # S × n × D
        if options["pooling"] == "mean":
            s = stacked.sum(dim=1)
            total = s if total is None else total + s
            count += n
        else:
            frames.append(stacked)
    if options["pooling"] == "mean":
        return total / max(count, 1)
    return torch.cat(frames, dim=1)
