"""One precision vocabulary for every command: ``fp32 | bf16 | fp16``.

Before, inference said ``fp32|bf16``, the profiler ``float32|float16|bfloat16`` and training accelerate's
``no|bf16|fp16`` — three spellings of one choice. Commands now document and record the short form; the other
spellings are still accepted (and normalised) so existing scripts and configs keep working. Accelerate is handed
its own word (``no`` for fp32) at the one place that calls it.
"""

from __future__ import annotations

from speechprune.errors import SpeechpruneError

__all__ = ["PRECISIONS", "PRECISION_HELP", "normalize_precision", "to_accelerate", "torch_dtype"]

PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_HELP = "fp32 | bf16 | fp16"
_ALIASES = {"fp32": "fp32", "float32": "fp32", "no": "fp32", "float": "fp32", "32": "fp32",
            "bf16": "bf16", "bfloat16": "bf16",
            "fp16": "fp16", "float16": "fp16", "half": "fp16", "16": "fp16"}


def normalize_precision(value: str, what: str = "precision") -> str:
    """``fp32``, ``bf16`` or ``fp16`` for any accepted spelling; a clear error naming ``what`` otherwise."""
    key = str(value).strip().lower()
    if key not in _ALIASES:
        raise SpeechpruneError(f"{what} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return _ALIASES[key]


def to_accelerate(value: str) -> str:
    """accelerate's ``mixed_precision`` word: ``no`` for fp32."""
    p = normalize_precision(value, "mixed_precision")
    return "no" if p == "fp32" else p


def torch_dtype(value: str):  # noqa: ANN201 - torch is imported lazily
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[normalize_precision(value)]
