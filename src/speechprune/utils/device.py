"""The one place where a ``--device`` / ``device:`` value becomes a :class:`torch.device`.

Every command and Python entry point that computes takes ``auto`` (CUDA when ``torch.cuda.is_available()``, else
the CPU), ``cpu``, ``cuda`` or ``cuda:N`` and resolves it here, so that

* a CUDA request on a machine without CUDA is one clear :class:`DeviceError` (the CLI prints it on one line and
  exits with code 2) instead of a traceback from deep inside torch;
* fp32 matrix multiplies and convolutions on CUDA use TF32 tensor cores (``allow_tf32``; ~2-8x faster than
  IEEE fp32 on Ampere and later, 10-bit mantissa inputs with fp32 accumulation). Only the CUDA backends are
  switched: CPU (oneDNN) numerics are left alone. ``SPEECHPRUNE_TF32=0`` keeps IEEE fp32 on CUDA.

``dtype`` ``bf16`` means different things per device (see :func:`bf16_weights`): bf16 *weights* on CUDA (the
fastest path there, faster than TF32 and than autocast, which re-casts fp32 weights on every forward), autocast on
the CPU (fp32 weights, bf16 AMX kernels for matmuls, fp32 elsewhere).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from speechprune.errors import SpeechpruneError

if TYPE_CHECKING:  # torch is imported inside the functions: CLI modules import DEVICE_HELP at start-up
    import torch

DEVICE_HELP = "auto (CUDA when available, else CPU) | cpu | cuda | cuda:N."


class DeviceError(SpeechpruneError):
    """A device that cannot be used here (unknown name, CUDA without a CUDA build or GPU, GPU index too high)."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N`` (or a :class:`torch.device`) → a usable :class:`torch.device`.

    ``None`` means ``auto``. CUDA devices get TF32 matmuls (:func:`enable_tf32`). ``meta`` is accepted for tests.
    """
    import torch

    if isinstance(spec, torch.device):
        name = str(spec)
    else:
        name = "auto" if spec is None else str(spec).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"unknown device {spec!r}: use {DEVICE_HELP}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f"device {name!r} asked for, but torch.cuda.is_available() is False ({why}); use "
                              "--device cpu or auto")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"device {name!r} asked for, but only {count} CUDA device(s) are visible "
                              f"(cuda:0..cuda:{count - 1})")
        enable_tf32()
    elif dev.type not in ("cpu", "meta"):
        raise DeviceError(f"unsupported device {name!r}: use {DEVICE_HELP}")
    return dev


def check_device(spec: str | torch.device | None) -> str:
    """Validate a device option without resolving ``auto`` (for configs that are resolved later); returns it."""
    name = "auto" if spec is None else str(spec).strip().lower()
    if name != "auto":
        resolve_device(name)
    return name


def enable_tf32() -> None:
    """TF32 for fp32 matmuls and cuDNN convolutions on CUDA (not on the CPU); a no-op with SPEECHPRUNE_TF32=0.

    The per-backend flags are used, not ``torch.set_float32_matmul_precision``: the latter also switches the CPU
    (oneDNN) backend, and mixing it with the newer ``fp32_precision`` API makes torch raise on later queries.
    """
    import torch

    if os.environ.get("SPEECHPRUNE_TF32", "1") == "0":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def bf16_weights(device: torch.device | str) -> bool:
    """Whether ``dtype="bf16"`` runs bf16 weights on ``device`` (CUDA) rather than fp32 weights under autocast
    (CPU, where AMX autocast is the fast path and keeps fp32 outside the matmuls)."""
    import torch

    return torch.device(device).type == "cuda"


def to_device(batch: dict, device: torch.device | str) -> dict:
    """A batch dict with every tensor moved to ``device`` (other values as they are)."""
    import torch

    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module without either."""
    import torch

    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def place_model(module: torch.nn.Module, device: torch.device | str, dtype: str = "fp32") -> torch.nn.Module:
    """Move ``module`` (in place) to ``device``; with ``dtype="bf16"`` on CUDA also cast its weights to bf16
    (:func:`bf16_weights`). Returns it."""
    import torch

    dev = torch.device(device)
    if dtype == "bf16" and bf16_weights(dev):
        return module.to(device=dev, dtype=torch.bfloat16)
    return module.to(dev)
