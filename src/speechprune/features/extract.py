"""Extract every layer's features once, pool them, and cache them on disk.

One forward pass per batch yields all L+1 states (hooks, see :mod:`speechprune.models.adapter`); they are pooled
immediately so memory holds one batch of frame-level states at a time, written as a shard, and consolidated at
the end. Re-running the same request returns the cached result; re-running after an interruption computes only
the missing batches. Bad input (a corrupt or empty file, NaN samples) aborts with an error naming the file and
removes the partial entry, since fixing the file changes the data fingerprint anyway.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from speechprune.data.cliplen import check_min_length
from speechprune.data.types import AudioDataset, Segment
from speechprune.errors import SpeechpruneError
from speechprune.features import store
from speechprune.features.chunking import DEFAULT_CHUNK_SECONDS, check_chunkable, pool_batch
from speechprune.features.pooling import POOLINGS
from speechprune.features.relabel import attach_labels
from speechprune.models.adapter import SpeechEncoder
from speechprune.utils.fingerprint import hash_json
from speechprune.utils.io import write_json_atomic
from speechprune.utils.locks import PathLock
from speechprune.utils.outputs import check_dir_target


def default_cache_root() -> Path:
    """``$SPEECHPRUNE_CACHE`` or ``~/.cache/speechprune``, with features under ``features/``."""
    return Path(os.environ.get("SPEECHPRUNE_CACHE", Path.home() / ".cache" / "speechprune")) / "features"


def request_key(
    encoder: SpeechEncoder, dataset: AudioDataset, options: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The cache key: model weights + config + input preparation, the audio (not the labels), and every option
    that changes the numbers (pooling, states, batch size — padding changes un-masked models —, dtype, device)."""
    request = {
        "model": encoder.fingerprint(),
        "data": dataset.fingerprint(labels=False, segments=options["pooling"] == "segment"),
        "n_items": len(dataset),
        **options,
    }
    return hash_json(request), request


def extract_features(
    encoder: SpeechEncoder,
    dataset: AudioDataset,
    *,
    pooling: str = "mean",
    layers: list[int] | None = None,
    batch_size: int = 8,
    dtype: str = "fp32",
    device: str = "cpu",
    final_norm: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    stop_after_batches: int | None = None,
    chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS,
) -> store.LayerFeatures:
    """Features of ``layers`` (state indices, default all 0..L) for every clip of ``dataset``.

    ``stop_after_batches`` stops early *without* consolidating (used by tests to simulate an interruption).
    """
    if pooling not in POOLINGS:
        raise SpeechpruneError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise SpeechpruneError(f"batch size must be ≥ 1, got {batch_size}")
    if len(dataset) == 0:
        raise SpeechpruneError(f"dataset {dataset.name!r} has no clips")
    states = list(range(encoder.num_states)) if layers is None else [encoder.check_state_index(i) for i in layers]
    options = {
        "pooling": pooling,
        "layers": states,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": torch.device(device).type,
        "final_norm": final_norm,
    }
    if check_chunkable(dataset, encoder, pooling, chunk_seconds):  # in the key only where a clip is chunked
        options["chunk_seconds"] = chunk_seconds
    key, request = request_key(encoder, dataset, options)
    root = check_dir_target(Path(cache_dir) if cache_dir else default_cache_root(), "feature cache")
    entry = store.entry_dir(root, dataset.name, key)
    if store.is_complete(entry):
        return attach_labels(store.load_features(entry), dataset)
    with PathLock(entry, "feature cache entry"):  # "in use by pid N" while another process fills it
        if store.is_complete(entry):
            return attach_labels(store.load_features(entry), dataset)
        feats = _fill_entry(encoder, dataset, entry, key, request, options, states, device, progress,
                            stop_after_batches)
    return attach_labels(feats, dataset)


def _fill_entry(encoder: SpeechEncoder, dataset: AudioDataset, entry: Path, key: str, request: dict[str, Any],
                options: dict[str, Any], states: list[int], device: str, progress: bool,
                stop_after_batches: int | None) -> store.LayerFeatures:
    batch_size = options["batch_size"]
    _preflight(dataset)
    check_min_length(dataset, encoder)
    entry.mkdir(parents=True, exist_ok=True)
    write_json_atomic(entry / "request.json", request)

    encoder.model.to(device).eval()
    n_batches = (len(dataset) + batch_size - 1) // batch_size
    done = store.finished_batches(entry)
    todo = [b for b in range(n_batches) if b not in done]
    started = time.perf_counter()
    try:
        _run_batches(encoder, dataset, entry, todo, n_batches, len(done), states, options, progress,
                     stop_after_batches)
    except SpeechpruneError:
        shutil.rmtree(entry, ignore_errors=True)
        raise
    if stop_after_batches is not None and len(todo) > stop_after_batches:
        return None  # type: ignore[return-value]
    elapsed = time.perf_counter() - started
    return _consolidate(encoder, dataset, entry, n_batches, states, request, key, elapsed, len(todo))


def _preflight(dataset: AudioDataset) -> None:
    """Cheap checks before any compute: every file exists and is not empty."""
    from speechprune.errors import AudioError

    for it in dataset.items:
        if it.path is None:
            continue
        p = Path(it.path)
        if not p.is_file():
            raise AudioError(f"{p}: audio file not found (item {it.key!r})")
        if p.stat().st_size == 0:
            raise AudioError(f"{p}: audio file is empty (0 bytes)")


def _run_batches(
    encoder: SpeechEncoder,
    dataset: AudioDataset,
    entry: Path,
    todo: list[int],
    n_batches: int,
    n_done: int,
    states: list[int],
    options: dict[str, Any],
    progress: bool,
    stop_after: int | None,
) -> None:
    from speechprune.data.batching import iter_batches

    bs = options["batch_size"]
    indices = [i for b in todo for i in range(b * bs, min((b + 1) * bs, len(dataset)))]
    bar = tqdm(total=n_batches, initial=n_done, desc=f"extract {dataset.name}", unit="batch", disable=not progress)
    for count, (idx, waves) in enumerate(iter_batches(dataset, bs, indices=indices)):
        if stop_after is not None and count >= stop_after:
            break
        batch_no = idx[0] // bs
        segs = [dataset.items[i].segments for i in idx] if options["pooling"] == "segment" else None
        pooled = pool_batch(encoder, waves, {**options, "layers": states}, segs)  # long clips in chunks
        global_index = np.asarray(idx, dtype=np.int64)[pooled.item_index.numpy()]
        tensors = {"states": store.as_numpy(pooled.states), "item_index": global_index}
        extra = None
        if pooled.segments is not None:
            extra = {
                "segments": [[s.start, s.end, s.label] for s in pooled.segments],
                "dropped_segments": pooled.dropped_segments,
            }
        store.write_shard(entry, batch_no, tensors, extra)
        bar.update(1)
    bar.close()


def _consolidate(
    encoder: SpeechEncoder,
    dataset: AudioDataset,
    entry: Path,
    n_batches: int,
    states: list[int],
    request: dict[str, Any],
    key: str,
    elapsed: float,
    computed_batches: int,
) -> store.LayerFeatures:
    parts, owners, segments = [], [], []
    dropped = 0
    for b in range(n_batches):
        tensors, extra = store.read_shard(entry, b)
        parts.append(tensors["states"])
        owners.append(tensors["item_index"])
        if extra is not None:
            segments += [Segment(*s) for s in extra["segments"]]
            dropped += extra["dropped_segments"]
    all_states = np.concatenate(parts, axis=1)
    item_index = np.concatenate(owners)
    labels = {c: [dataset.items[i].labels[c] for i in item_index] for c in dataset.label_columns}
    tensors = {"states": all_states, "item_index": item_index}
    if request["pooling"] == "segment":
        labels["segment"] = [s.label for s in segments]
        tensors["segment_start"] = np.asarray([s.start for s in segments], dtype=np.float32)
        tensors["segment_end"] = np.asarray([s.end for s in segments], dtype=np.float32)
    meta = {
        "key": key,
        "layers": states,
        "pooling": request["pooling"],
        "labels": labels,
        "groups": [dataset.items[i].group for i in item_index],
        "group_column": dataset.group_column,
        "item_keys": [dataset.items[i].key for i in item_index],
        "dropped_segments": dropped,
        "model": {k: v for k, v in encoder.describe().items() if k != "source"},
        "data": {"name": dataset.name, "n_items": len(dataset)},
        "request": request,
    }
    run = {
        "seconds": round(elapsed, 3),
        "computed_batches": computed_batches,
        "clips_per_second": round(len(dataset) * computed_batches / max(n_batches, 1) / max(elapsed, 1e-9), 2),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": request["device"],
        "machine": platform.machine(),
    }
    store.write_final(entry, tensors, meta, run)
    return store.load_features(entry)
