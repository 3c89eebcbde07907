"""On-disk feature cache: one folder per (model, data, options) key.

Layout of a cache entry::

    <root>/<data-name>-<key>/
        request.json            what was asked (written first; identifies the entry)
        shards/00012.safetensors one file per finished batch (atomic), plus 00012.json for segment labels
        features.safetensors    the consolidated result: ``states`` (S × R × D, float32), ``item_index`` (R)
        meta.json               layers, pooling, per-row labels and groups; written last = "complete" marker
        run.json                timings, clips/s, device, threads, versions (not part of the identity)

Shards make an interrupted extraction resumable batch by batch; consolidation concatenates them in batch order,
so a resumed run ends byte-identical to an uninterrupted one. Only safetensors and JSON are used (never pickle).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy

from speechprune.errors import CacheError, LayerIndexError
from speechprune.utils.io import atomic_path, write_json_atomic


@dataclass
class LayerFeatures:
    """Pooled features of every requested state.

    ``states[j]`` is the ``R × D`` matrix of state ``layers[j]`` (layer-major storage, because every analysis
    iterates over layers). Row ``r`` belongs to clip ``item_index[r]``; ``labels[col][r]`` is its label.
    """

    states: np.ndarray
    layers: list[int]
    item_index: np.ndarray
    labels: dict[str, list[str]]
    groups: list[str | None]
    pooling: str
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_rows(self) -> int:
        return int(self.states.shape[1])

    @property
    def dim(self) -> int:
        return int(self.states.shape[2])

    def layer(self, state: int) -> np.ndarray:
        """The ``R × D`` features of one state (index under the speechprune convention)."""
        if state not in self.layers:
            raise LayerIndexError(
                f"state {state} is not in these features; available states: {self.layers[0]}..{self.layers[-1]}"
                if self.layers == list(range(self.layers[0], self.layers[-1] + 1))
                else f"state {state} is not in these features; available states: {self.layers}"
            )
        return self.states[self.layers.index(state)]


def entry_dir(root: Path, data_name: str, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", data_name)[:40] or "data"
    return root / f"{safe}-{key}"


def shard_path(entry: Path, batch: int) -> Path:
    return entry / "shards" / f"{batch:05d}.safetensors"


def write_shard(entry: Path, batch: int, tensors: dict[str, np.ndarray], extra: dict[str, Any] | None) -> None:
    """Write one finished batch: the JSON side file first, the tensor file last (its presence = done)."""
    path = shard_path(entry, batch)
    if extra is not None:
        write_json_atomic(path.with_suffix(".json"), extra)
    with atomic_path(path) as tmp:
        save_numpy({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))


def finished_batches(entry: Path) -> set[int]:
    folder = entry / "shards"
    if not folder.is_dir():
        return set()
    return {int(p.stem) for p in folder.glob("[0-9]*.safetensors")}


def read_shard(entry: Path, batch: int) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    path = shard_path(entry, batch)
    side = path.with_suffix(".json")
    extra = json.loads(side.read_text()) if side.exists() else None
    return load_numpy(str(path)), extra


def write_final(entry: Path, tensors: dict[str, np.ndarray], meta: dict[str, Any], run: dict[str, Any]) -> None:
    with atomic_path(entry / "features.safetensors") as tmp:
        save_numpy({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
    write_json_atomic(entry / "run.json", run)
    write_json_atomic(entry / "meta.json", meta)  # last: marks the entry complete
    shutil.rmtree(entry / "shards", ignore_errors=True)


def is_complete(entry: Path) -> bool:
    return (entry / "meta.json").is_file() and (entry / "features.safetensors").is_file()


def load_features(entry: str | Path) -> LayerFeatures:
    """Load a complete cache entry (e.g. the folder printed by ``speechprune extract``)."""
    entry = Path(entry)
    if not is_complete(entry):
        raise CacheError(f"{entry} is not a complete feature cache entry (no meta.json / features.safetensors)")
    try:
        meta = json.loads((entry / "meta.json").read_text())
        tensors = load_numpy(str(entry / "features.safetensors"))
    except Exception as exc:  # truncated or corrupt files (SafetensorError, JSONDecodeError, ...)
        raise CacheError(f"feature cache entry {entry} is damaged ({type(exc).__name__}: {exc}); delete that folder "
                         "to extract again") from exc
    return LayerFeatures(
        states=tensors["states"],
        layers=list(meta["layers"]),
        item_index=tensors["item_index"],
        labels={k: list(v) for k, v in meta["labels"].items()},
        groups=list(meta["groups"]),
        pooling=meta["pooling"],
        meta=meta,
        path=entry,
    )


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()
