"""The teacher pass, run once: the student's input (front-end output) and the teacher's target states for every
clip, cached on disk as safetensors.

Stage 1 regresses frames, not pooled vectors, and its input (the front end's output, before the positional
embedding) is not one of the L + 1 states, so the pooled feature cache of :mod:`speechprune.features.extract`
cannot serve it; this cache lives beside it (``<cache root>/distill_targets/``), keyed the same way: teacher
weights + config + input preparation, the audio, and every option that changes the numbers. A second run (another
mimicker, another hidden size, stage 2, a resumed run) reads the cache and never runs the teacher again.

Frames kept per clip are the frames the teacher's head pools over: the whole encoder window for Whisper (its
stock head averages over padding too), the valid frames for the wav2vec2 family (the attention mask is always
passed, as :func:`speechprune.models.classifier.classifier_inputs` does for the teacher).

Layout: one file ``targets.safetensors`` with ``front``, ``last`` and ``intermediate_<i>`` for every intermediate
state asked for so far (F × D float32, all clips' frames concatenated in dataset order) and ``offsets`` (N + 1), plus
``meta.json`` written last. Asking for a new intermediate state recomputes the entry with all of them (the key does
not depend on it), so one entry serves every student of a teacher and data set.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechprune.compress.distill.student import front_end_of
from speechprune.data.types import AudioDataset
from speechprune.errors import SpeechpruneError
from speechprune.models.adapter import EncoderInputs, SpeechEncoder
from speechprune.models.classifier import classifier_inputs
from speechprune.utils.device import model_device, to_device
from speechprune.utils.fingerprint import hash_json
from speechprune.utils.io import atomic_dir, write_json_atomic


def default_targets_root() -> Path:
    return Path(os.environ.get("SPEECHPRUNE_CACHE", Path.home() / ".cache" / "speechprune")) / "distill_targets"


@dataclass
class TeacherTargets:
    """Frame-level student inputs and teacher targets of every clip of a data set."""

    front: torch.Tensor
    last: torch.Tensor
    intermediate: torch.Tensor | None
    offsets: np.ndarray
    intermediate_state: int | None
    pool_all_frames: bool
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def clip(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))


def teacher_targets(
    teacher: SpeechEncoder,
    dataset: AudioDataset,
    *,
    intermediate: int | None = None,
    batch_size: int = 8,
    max_seconds: float | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> TeacherTargets:
    """Compute (or read from the cache) the student input and the teacher targets for every clip of ``dataset``.

    ``last`` is the teacher's state L as its head sees it (final LayerNorm applied where the model has one);
    ``intermediate`` the raw state ``intermediate`` (1..L−1) if asked.
    """
    if intermediate is not None:
        teacher.check_layer_index(intermediate)
    if len(dataset) == 0:
        raise SpeechpruneError(f"dataset {dataset.name!r} has no clips")
    request = {
        "kind": "distill-targets-v1",
        "model": teacher.fingerprint(),
        "data": dataset.fingerprint(labels=False, segments=False),
        "n_items": len(dataset),
        "batch_size": batch_size,
        "max_seconds": max_seconds,
    }
    key = hash_json(request)
    from speechprune.utils.locks import PathLock
    from speechprune.utils.outputs import check_dir_target

    root = check_dir_target(Path(cache_dir or default_targets_root()), "teacher target cache")
    entry = root / f"{dataset.name}-{key[:16]}"
    with PathLock(entry, "teacher target cache entry"):  # "in use by pid N" while another process fills it
        return _cached_or_computed(teacher, dataset, entry, request, key, intermediate, batch_size, max_seconds,
                                   progress)


def _cached_or_computed(teacher: SpeechEncoder, dataset: AudioDataset, entry: Path, request: dict[str, Any],
                        key: str, intermediate: int | None, batch_size: int, max_seconds: float | None,
                        progress: bool) -> TeacherTargets:
    from safetensors.torch import load_file

    have: list[int] = []
    if (entry / "meta.json").exists():
        import json

        meta = json.loads((entry / "meta.json").read_text())
        have = list(meta.get("intermediate_states", []))
        if intermediate is None or intermediate in have:
            t = load_file(str(entry / "targets.safetensors"))
            inter = t[f"intermediate_{intermediate}"] if intermediate is not None else None
            return TeacherTargets(t["front"], t["last"], inter, t["offsets"].numpy(), intermediate,
                                  meta["pool_all_frames"], meta)
    # (re)compute, keeping every intermediate state computed before: one cache entry serves all students
    wanted = sorted(set(have) | ({intermediate} if intermediate is not None else set()))
    tensors, meta = _teacher_pass(teacher, dataset, wanted, batch_size, max_seconds, progress)
    meta.update(request=request, key=key, intermediate_states=wanted)
    _write_entry(entry, tensors, meta)
    inter = tensors[f"intermediate_{intermediate}"] if intermediate is not None else None
    return TeacherTargets(tensors["front"], tensors["last"], inter, tensors["offsets"].numpy(), intermediate,
                          meta["pool_all_frames"], meta)


def _teacher_pass(teacher: SpeechEncoder, dataset: AudioDataset, intermediates: list[int], batch_size: int,
                  max_seconds: float | None, progress: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from speechprune.data.batching import iter_batches

    started = time.perf_counter()
    device = model_device(teacher.model)
    front_end = front_end_of(teacher).to(device).eval()  # the student's input, computed where the teacher runs
    teacher.model.eval()
    pool_all = front_end.pool_all_frames  # Whisper's stock head averages over the whole window
    cut = None if max_seconds is None else int(round(max_seconds * 16_000))
    states = [teacher.num_layers, *intermediates]
    fronts: list[torch.Tensor] = []
    outs: list[list[torch.Tensor]] = [[] for _ in states]
    lengths: list[int] = []
    batches = iter_batches(dataset, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=(len(dataset) + batch_size - 1) // batch_size, desc="teacher pass", unit="batch")
    for _, waves in batches:
        if cut is not None:
            waves = [w[:cut] for w in waves]
        kwargs = classifier_inputs(teacher, waves)
        samples = torch.tensor([len(w) for w in waves])
        frames = teacher.frame_lengths(samples)
        hs = teacher.hidden_states(EncoderInputs(dict(kwargs), frames, samples), final_norm=True, layers=states)
        with torch.inference_mode():
            on_device = to_device(kwargs, device)
            fr, _ = front_end.run(**on_device)
            fr, hs = fr.float().cpu(), [h.cpu() for h in hs]  # the cache (and the training sets) live on the CPU
        for b in range(len(waves)):
            n = fr.shape[1] if pool_all else int(frames[b])
            fronts.append(fr[b, :n].clone())  # clone outside inference mode: an ordinary tensor
            for j in range(len(states)):
                outs[j].append(hs[j][b, :n].clone())
            lengths.append(n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tensors = {"front": torch.cat(fronts), "last": torch.cat(outs[0]), "offsets": torch.from_numpy(offsets)}
    for j, i in enumerate(intermediates):
        tensors[f"intermediate_{i}"] = torch.cat(outs[j + 1])
    meta = {
        "pool_all_frames": pool_all,
        "frames": int(offsets[-1]),
        "d_model": int(tensors["front"].shape[1]),
        "last_includes_final_norm": teacher.final_norm is not None,
        "seconds": round(time.perf_counter() - started, 3),
        "threads": torch.get_num_threads(),
    }
    return tensors, meta


def _write_entry(entry: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    with atomic_dir(entry) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "targets.safetensors"))
        write_json_atomic(tmp / "meta.json", meta)


class FrameDataset(torch.utils.data.Dataset):
    """Clips ``indices`` of cached targets, as dicts of frame tensors plus the class target."""

    def __init__(self, targets: TeacherTargets, indices: Any, labels: list[int] | None = None) -> None:
        self.t = targets
        self.indices = [int(i) for i in indices]
        self.labels = labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        s = self.t.clip(self.indices[k])
        item = {"front": self.t.front[s], "last": self.t.last[s],
                "label": self.labels[k] if self.labels is not None else 0}
        if self.t.intermediate is not None:
            item["intermediate"] = self.t.intermediate[s]
        return item


class FrameCollate:
    """Pad a list of clips to the longest; ``frame_mask`` only where clips can differ in length (wav2vec2 family).

    ``regression=True`` puts zeros in ``labels`` (stage 1 has no classes; the trainer's accuracy is then constant
    and model selection falls to the validation loss)."""

    def __init__(self, pool_all_frames: bool, regression: bool) -> None:
        self.pool_all_frames = pool_all_frames
        self.regression = regression

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([len(it["front"]) for it in items])
        t, d = int(lengths.max()), items[0]["front"].shape[1]

        def pad(key: str) -> torch.Tensor:
            out = torch.zeros(len(items), t, d)
            for b, it in enumerate(items):
                out[b, : len(it[key])] = it[key]
            return out

        batch = {"front": pad("front")}
        if self.regression:
            batch["target_last"] = pad("last")
            if "intermediate" in items[0]:
                batch["target_intermediate"] = pad("intermediate")
            batch["labels"] = torch.zeros(len(items), dtype=torch.long)
        else:
            batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
        if not self.pool_all_frames:
            batch["frame_mask"] = torch.arange(t)[None, :] < lengths[:, None]
        return batch
