"""Content fingerprints used as cache keys: a cache entry is reused only when the model weights, the data and
every option that changes the numbers are the same."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def hash_json(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def hash_array(arr: np.ndarray, h: "hashlib._Hash | None" = None) -> str:
    """Hash an array's dtype, shape and bytes."""
    h = h or hashlib.sha256()
    a = np.ascontiguousarray(arr)
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def hash_state_dict(state_dict: dict[str, Any]) -> str:
    """Hash every tensor of a torch state dict (names, shapes, dtypes, values).

    Hashing the weights (not only the config) is what makes a fine-tuned or pruned model get its own cache
    entry; ~0.1 s for a base-size model.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(name.encode())
        arr = t.detach().cpu()
        if arr.dtype.is_floating_point and arr.dtype not in (__import__("torch").float32, __import__("torch").float64):
            arr = arr.float()
        h.update(str(tuple(arr.shape)).encode())
        h.update(str(arr.dtype).encode())
        h.update(arr.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
