"""Extract every layer's features once, pool them, and cache them on disk.

One forward pass per batch yields all L+1 states (hooks, see :mod:`speechprune.models.adapter`, installed once per
extraction); each state is pooled the moment its layer produces it, so memory never holds more than a few
frame-level states. Finished batches are written as shards by a helper thread while the next forward runs, and
consolidated at the end. Clips are decoded and padded into model inputs (pinned when the device is CUDA) on a
background thread. Re-running the same request returns the cached result; re-running after an interruption
computes only the missing batches. Bad input (a corrupt or empty file, NaN samples) aborts with an error naming the
file and removes the partial entry, since fixing the file changes the data fingerprint anyway.

**Length bucketing.** For models whose features do not depend on padding (an attention mask and padding-aware
pooling), batches are planned over clips sorted by length, so variable-length data pads little; consolidation
restores the dataset's order, so the entry has the same layout as an unsorted one and equal values (to float
rounding: a clip's arithmetic runs at another padded length). Such entries carry ``order: length`` in their key.

**Several processes** (``accelerate launch`` / ``torchrun``): when every process calls :func:`extract_features`
together, the main process plans the batches and the processes take every ``world_size``-th one (one device each),
writing their shards into the same entry (a cache directory all processes see); the main process consolidates
them. A batch holds the same clips, padded the same way, whichever process computes it, so the entry is
byte-identical to a single-process one (given the same kernels: same device type and threads per process).
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

from speechprune import errors
from speechprune.data.cliplen import check_min_length
from speechprune.data.types import AudioDataset, Segment
from speechprune.errors import CacheError, SpeechpruneError
from speechprune.features import store
from speechprune.features.chunking import DEFAULT_CHUNK_SECONDS, check_chunkable, chunk_limit, pool_batch
from speechprune.features.pooling import POOLINGS, PooledBatch, pool_stacked
from speechprune.features.relabel import attach_labels
from speechprune.models.adapter import EncoderInputs, SpeechEncoder, _autocast
from speechprune.utils import distributed
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
    bucket: bool | None = None,
    chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS,
) -> store.LayerFeatures:
    """Features of ``layers`` (state indices, default all 0..L) for every clip of ``dataset``.

    ``bucket``: batch clips of similar length (see the module docstring). ``None`` (default) buckets exactly when
    it cannot change the features beyond float rounding — an attention-masked model with padding-aware pooling
    (not ``mean-all``; Whisper always pads to its window, so sorting saves nothing there); ``True`` forces it (for
    un-masked models, e.g. wav2vec2-base, the features then differ from unsorted batches, by less padding);
    ``False`` keeps dataset order. Under ``accelerate launch`` / ``torchrun`` all processes share the work when
    they all call this function (see the module docstring); inside :func:`speechprune.utils.distributed.solo`
    the calling process does all of it.

    ``stop_after_batches`` stops early *without* consolidating (used by tests to simulate an interruption).
    """
    if pooling not in POOLINGS:
        raise SpeechpruneError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise SpeechpruneError(f"batch size must be ≥ 1, got {batch_size}")
    if len(dataset) == 0:
        raise SpeechpruneError(f"dataset {dataset.name!r} has no clips")
    states = list(range(encoder.num_states)) if layers is None else [encoder.check_state_index(i) for i in layers]
    options: dict[str, Any] = {
        "pooling": pooling,
        "layers": states,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": torch.device(device).type,
        "final_norm": final_norm,
    }
    if check_chunkable(dataset, encoder, pooling, chunk_seconds):  # in the key only where a clip is chunked
        options["chunk_seconds"] = chunk_seconds
    if _use_bucketing(encoder, pooling, bucket):
        options["order"] = "length"  # only then: keys of batches in dataset order are unchanged
    key, request = request_key(encoder, dataset, options)
    root = check_dir_target(Path(cache_dir) if cache_dir else default_cache_root(), "feature cache")
    job = _Job(encoder, dataset, store.entry_dir(root, dataset.name, key), key, request, states)
    if distributed.is_collective():
        feats = _extract_shared(job, device, progress, stop_after_batches)
        return feats if feats is None else attach_labels(feats, dataset)
    if store.is_complete(job.entry):
        return attach_labels(store.load_features(job.entry), dataset)
    with PathLock(job.entry, "feature cache entry"):  # "in use by pid N" while another process fills it
        if store.is_complete(job.entry):
            return attach_labels(store.load_features(job.entry), dataset)
        feats = _fill_entry(job, device, progress, stop_after_batches)
    return feats if feats is None else attach_labels(feats, dataset)


def _fill_entry(job: "_Job", device: str, progress: bool, stop_after_batches: int | None) -> store.LayerFeatures:
    plan, todo = job.open()
    started = time.perf_counter()
    try:
        job.run(plan, todo, torch.device(device), progress, stop_after_batches, initial=len(plan) - len(todo))
    except SpeechpruneError:
        shutil.rmtree(job.entry, ignore_errors=True)
        raise
    if stop_after_batches is not None and len(todo) > stop_after_batches:
        return None  # type: ignore[return-value]
    return job.consolidate(plan, time.perf_counter() - started, len(todo))


def _use_bucketing(encoder: SpeechEncoder, pooling: str, bucket: bool | None) -> bool:
    if bucket is not None:
        return bool(bucket)
    return pooling != "mean-all" and bool(getattr(encoder, "use_attention_mask", False))


def _extract_shared(job: "_Job", device: str, progress: bool, stop_after: int | None) -> store.LayerFeatures:
    """Sharded extraction: every process of the launch runs this together (each step is a collective call)."""
    import contextlib

    main = distributed.is_main_process()
    with contextlib.ExitStack() as lock:
        return _extract_shared_locked(job, device, progress, stop_after, main, lock)


def _extract_shared_locked(job: "_Job", device: str, progress: bool, stop_after: int | None, main: bool,
                           lock: Any) -> store.LayerFeatures:
    msg: tuple[Any, ...] = ()
    error: BaseException | None = None
    if main:
        try:
            if store.is_complete(job.entry):
                msg = ("complete",)
            else:
                lock.enter_context(PathLock(job.entry, "feature cache entry"))  # held until consolidated
                msg = ("complete",) if store.is_complete(job.entry) else ("run", *job.open())
        except BaseException as exc:  # every process must learn of it, or the others wait forever
            error, msg = exc, ("error", _describe(exc))
    msg = distributed.broadcast_object(msg)
    if msg[0] == "complete":
        return store.load_features(job.entry)
    if msg[0] == "error":
        raise error if error is not None else _rebuild(msg[1], 0)
    _, plan, todo = msg
    mine = todo[distributed.rank() :: distributed.world_size()]
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", distributed.local_rank())  # one device per process
    started = time.perf_counter()
    try:
        job.run(plan, mine, dev, progress and main, stop_after, initial=0)
    except BaseException as exc:
        error = exc
    stopped = stop_after is not None and len(mine) > stop_after
    reports = distributed.gather_objects((None if error is None else _describe(error), stopped, len(mine)))
    failed = [(r, e) for r, (e, _, _) in enumerate(reports) if e is not None]
    if failed:
        if main and any(e[2] for _, e in failed):  # bad input: drop the partial entry, as one process does
            shutil.rmtree(job.entry, ignore_errors=True)
        if error is not None:
            raise error
        raise _rebuild(failed[0][1], failed[0][0])
    if any(s for _, s, _ in reports):
        return None  # type: ignore[return-value]
    if main:
        try:
            job.consolidate(plan, time.perf_counter() - started, len(todo), [n for _, _, n in reports])
            msg = ("ok",)
        except BaseException as exc:
            error, msg = exc, ("error", _describe(exc))
    msg = distributed.broadcast_object(msg)
    if msg[0] == "error":
        raise error if error is not None else _rebuild(msg[1], 0)
    return store.load_features(job.entry)


def _describe(exc: BaseException) -> tuple[str, str, bool]:
    return type(exc).__name__, str(exc), isinstance(exc, SpeechpruneError)


def _rebuild(desc: tuple[str, str, bool], process: int) -> BaseException:
    """Another process's error, raised here too (speechprune's own error types keep their type)."""
    name, message, ours = desc
    cls = getattr(errors, name, None) if ours else None
    if not (isinstance(cls, type) and issubclass(cls, SpeechpruneError)):
        cls = SpeechpruneError
    return cls(f"{message} (in process {process})" if ours else f"process {process} failed: {name}: {message}")


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


class _Job:
    """One cache entry being filled: planning, the batch loop, and consolidation."""

    def __init__(self, encoder: SpeechEncoder, dataset: AudioDataset, entry: Path, key: str,
                 request: dict[str, Any], states: list[int]) -> None:
        self.encoder, self.dataset, self.entry, self.key, self.request = encoder, dataset, entry, key, request
        self.states = states
        self.options = request  # pooling, batch_size, dtype, final_norm, order
        self.by_length = request.get("order") == "length"

    def plan(self) -> list[list[int]]:
        """Batch ``b`` (shard ``b``) holds these clips: consecutive ones, or similar lengths when bucketing."""
        bs, n = self.options["batch_size"], len(self.dataset)
        if not self.by_length:
            return [list(range(k, min(k + bs, n))) for k in range(0, n, bs)]
        from speechprune.data.batching import clip_lengths, length_sorted_batches

        return length_sorted_batches(clip_lengths(self.dataset), bs)

    def open(self) -> tuple[list[list[int]], list[int]]:
        """Check the files, create the entry, and list the batches still to compute."""
        _preflight(self.dataset)
        check_min_length(self.dataset, self.encoder)
        self.entry.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.entry / "request.json", self.request)
        plan = self.plan()
        done = store.finished_batches(self.entry)
        return plan, [b for b in range(len(plan)) if b not in done]

    def run(self, plan: list[list[int]], batches: list[int], device: torch.device, progress: bool,
            stop_after: int | None, initial: int) -> None:
        from speechprune.data.batching import iter_batches

        enc, opts = self.encoder, self.options
        current = next(enc.model.parameters()).device
        if current.type != device.type or device.index is not None:  # "cuda" for a model on cuda:1 means cuda:1
            enc.model.to(device)
        enc.model.eval()
        pin = device.type == "cuda" and torch.cuda.is_available()

        limit = chunk_limit(enc, opts.get("chunk_seconds"))

        def prepare(waves: list[np.ndarray]) -> Any:  # on the decoding thread, overlapping the forward
            if limit is not None and any(len(w) > limit for w in waves):
                return waves  # long clips: encoded chunk by chunk (features.chunking)
            inputs = enc.prepare(waves)
            if pin:
                inputs.model_kwargs = {k: v.pin_memory() for k, v in inputs.model_kwargs.items()}
            return inputs

        segmented = opts["pooling"] == "segment"
        total = len(plan) if initial else len(batches)
        bar = tqdm(total=total, initial=initial, desc=f"extract {self.dataset.name}", unit="batch",
                   disable=not progress)
        loader = iter_batches(self.dataset, opts["batch_size"], batches=[plan[b] for b in batches], transform=prepare)
        try:
            with _PooledForward(enc, self.states, opts, device) as forward, _ShardWriter(self.entry) as writer:
                for count, (batch_no, (idx, inputs)) in enumerate(zip(batches, loader)):
                    if stop_after is not None and count >= stop_after:
                        break
                    segs = [self.dataset.items[i].segments for i in idx] if segmented else None
                    if isinstance(inputs, list):  # a batch with a clip above the chunk limit (rare)
                        forward.paused = True  # its own forward passes must not feed this one's stacking buffer
                        try:
                            pooled = pool_batch(enc, inputs, {**opts, "layers": self.states}, segs)
                        finally:
                            forward.paused = False
                    else:
                        pooled = forward(inputs, segs)
                    writer.submit(batch_no, idx, pooled)
                    bar.update(1)
        finally:
            loader.close()  # stops the decoding thread at once
            bar.close()

    def consolidate(self, plan: list[list[int]], elapsed: float, computed_batches: int,
                    per_process: list[int] | None = None) -> store.LayerFeatures:
        dataset, request = self.dataset, self.request
        n_batches = len(plan)
        parts, owners, segments = [], [], []
        dropped = 0
        for b in range(n_batches):
            try:
                tensors, extra = store.read_shard(self.entry, b)
            except FileNotFoundError as exc:
                raise CacheError(
                    f"{self.entry}: shard {b} is missing; in a multi-machine launch the feature cache must be on a "
                    f"file system that every process sees (--cache-dir)") from exc
            parts.append(tensors["states"])
            owners.append(tensors["item_index"])
            if extra is not None:
                segments += [Segment(*s) for s in extra["segments"]]
                dropped += extra["dropped_segments"]
        all_states = np.concatenate(parts, axis=1)
        item_index = np.concatenate(owners)
        if self.by_length:  # back to dataset order (stable: a clip's rows keep their order)
            order = np.argsort(item_index, kind="stable")
            all_states, item_index = all_states[:, order], item_index[order]
            segments = [segments[k] for k in order] if segments else segments
        labels = {c: [dataset.items[i].labels[c] for i in item_index] for c in dataset.label_columns}
        tensors = {"states": all_states, "item_index": item_index}
        if request["pooling"] == "segment":
            labels["segment"] = [s.label for s in segments]
            tensors["segment_start"] = np.asarray([s.start for s in segments], dtype=np.float32)
            tensors["segment_end"] = np.asarray([s.end for s in segments], dtype=np.float32)
        meta = {
            "key": self.key,
            "layers": self.states,
            "pooling": request["pooling"],
            "labels": labels,
            "groups": [dataset.items[i].group for i in item_index],
            "group_column": dataset.group_column,
            "item_keys": [dataset.items[i].key for i in item_index],
            "dropped_segments": dropped,
            "model": {k: v for k, v in self.encoder.describe().items() if k != "source"},
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
            "batches_per_process": per_process or [computed_batches],
        }
        store.write_final(self.entry, tensors, meta, run)
        return store.load_features(self.entry)


class _PooledForward:
    """The forward pass of one batch, each wanted state copied into one stacking buffer the moment its layer
    produces it, then pooled.

    The encoder's state hooks are installed once for the whole extraction and write into an :class:`_Arrivals`
    mapping, so no frame-level state outlives the next layer (the old path kept all L+1 of them, stacked them into an
    S × B × T × D copy, and the mean's einsum permuted that into another). For ``mean`` the buffer is laid out as
    the einsum's batched product reads it (B × S × D × T), so that product needs no copy; the other poolings get the
    stack's own layout. Either way the pooling does exactly the arithmetic of pooling the stack, so the cache bytes
    are those of :func:`~speechprune.features.pooling.pool_states` (``tests/test_extract_scale.py`` checks this).
    """

    def __init__(self, encoder: SpeechEncoder, states: list[int], options: dict[str, Any],
                 device: torch.device) -> None:
        self.encoder = encoder
        self.slots: dict[int, list[int]] = {}
        for j, state in enumerate(states):
            self.slots.setdefault(state, []).append(j)
        self.n_slots = len(states)
        self.pooling, self.dtype = options["pooling"], options["dtype"]
        self.final_norm = encoder.final_norm if options["final_norm"] else None
        param = next(encoder.model.parameters())
        self.device, weights = param.device, param.dtype  # inputs go where the model is
        # as SpeechEncoder.hidden_states: non-fp32 weights (bf16 on CUDA) get inputs of their dtype, no autocast
        self.input_dtype = None if weights == torch.float32 else weights
        self.autocast = _autocast("fp32" if weights == torch.bfloat16 else self.dtype, device)
        self.arrivals = _Arrivals(self)
        self.paused = False  # True while another forward (chunked long clips) runs under the installed hooks
        self.stacked: torch.Tensor | None = None
        self._hooks: list[Any] = []

    def __enter__(self) -> "_PooledForward":
        self._hooks = self.encoder._install_hooks(self.arrivals)  # type: ignore[arg-type]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()

    def receive(self, state: int, x: torch.Tensor) -> None:
        slots = self.slots.get(state)
        if not slots or self.paused:
            return
        if state == self.encoder.num_layers and self.final_norm is not None:
            with torch.autocast(self.device.type, enabled=False):  # as hidden_states applies it, after autocast
                x = self.final_norm(x)
        if self.stacked is None:
            b, t, d = x.shape
            if self.pooling == "mean":
                buf = torch.empty((b, self.n_slots, d, t), dtype=torch.float32, device=x.device)
                self.stacked = buf.permute(1, 0, 3, 2)
            else:
                self.stacked = torch.empty((self.n_slots, b, t, d), dtype=torch.float32, device=x.device)
        for j in slots:
            self.stacked[j].copy_(x)  # = x.float()

    def __call__(self, inputs: EncoderInputs, segments: list[Any] | None) -> PooledBatch:
        enc = self.encoder
        cast = self.input_dtype
        inputs = EncoderInputs(
            {k: v.to(self.device, dtype=cast if cast is not None and v.is_floating_point() else None, non_blocking=True)
             for k, v in inputs.model_kwargs.items()},
            inputs.frame_lengths, inputs.sample_lengths, inputs.extras)
        self.arrivals.clear()
        self.stacked = None
        with torch.inference_mode(), self.autocast:
            enc._run_encoder(inputs)
        if len(self.arrivals) != enc.num_states:
            raise SpeechpruneError(
                f"captured {len(self.arrivals)} of {enc.num_states} states; is layerdrop active (model in train mode)?"
            )
        stacked, self.stacked = self.stacked, None
        assert stacked is not None
        with torch.inference_mode():
            return pool_stacked(stacked, inputs.frame_lengths, self.pooling, enc.frame_rate, segments)


class _Arrivals(dict):
    """What the encoder's hooks write into: records which states arrived and hands each to the stacking buffer."""

    def __init__(self, forward: _PooledForward) -> None:
        super().__init__()
        self._forward = forward

    def __setitem__(self, state: int, x: torch.Tensor) -> None:
        super().__setitem__(state, True)
        self._forward.receive(state, x)


class _ShardWriter:
    """Writes finished batches on a helper thread while the next forward runs (the copy to host memory included,
    so on a GPU it does not stall the launch of the next batch). At most a few writes are in flight; an error
    surfaces at the next submit or when the block ends, after the writes already queued have finished."""

    def __init__(self, entry: Path, max_pending: int = 4) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.entry, self.max_pending = entry, max_pending
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="speechprune-shards")
        self.pending: list[Any] = []

    def __enter__(self) -> "_ShardWriter":
        return self

    def submit(self, batch_no: int, idx: list[int], pooled: PooledBatch) -> None:
        while len(self.pending) >= self.max_pending or (self.pending and self.pending[0].done()):
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self._write, batch_no, idx, pooled))

    def _write(self, batch_no: int, idx: list[int], pooled: PooledBatch) -> None:
        global_index = np.asarray(idx, dtype=np.int64)[pooled.item_index.cpu().numpy()]
        tensors = {"states": store.as_numpy(pooled.states), "item_index": global_index}
        extra = None
        if pooled.segments is not None:
            extra = {
                "segments": [[s.start, s.end, s.label] for s in pooled.segments],
                "dropped_segments": pooled.dropped_segments,
            }
        store.write_shard(self.entry, batch_no, tensors, extra)

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            for f in self.pending:  # finished batches are kept even when the loop failed (resume)
                if exc_type is None:
                    f.result()
                else:
                    f.exception()
        finally:
            self.pool.shutdown(wait=True)
