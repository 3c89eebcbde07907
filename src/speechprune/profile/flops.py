"""Measured MACs from ``torch.utils.flop_counter.FlopCounterMode``: the cross-check for :mod:`.macs`.

Two traps (docs/methods.md §4.2) are handled here so callers cannot fall into them:

* FlopCounterMode fails under ``torch.inference_mode()`` on the weight-norm parametrized positional conv, so the
  forward runs under ``torch.no_grad()``;
* CPU sdpa (``_scaled_dot_product_flash_attention_for_cpu``) has no FLOP formula, so attention would be missed;
  the attention implementation is switched to ``eager`` for the count and restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from speechprune.profile.arch import PARTS, ArchSpec, dummy_inputs, part_modules, resolve_modules, spec_from_parts
from speechprune.profile.macs import whisper_windows


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Temporarily make every config reachable from ``model`` use eager attention; restore the old values after.

    The internal attribute is set directly (not via ``set_attn_implementation``) because the old value may be one
    that transformers would refuse to set again, and restoring must never fail.
    """
    configs: dict[int, Any] = {}
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation_internal"):
            configs.setdefault(id(cfg), cfg)
    saved = {key: cfg._attn_implementation_internal for key, cfg in configs.items()}
    try:
        for cfg in configs.values():
            cfg._attn_implementation_internal = "eager"
        yield
    finally:
        for key, cfg in configs.items():
            cfg._attn_implementation_internal = saved[key]


def flop_counter_macs(
    model: nn.Module,
    num_samples: int = 16_000,
    *,
    inputs: dict[str, torch.Tensor] | None = None,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Run one forward under FlopCounterMode and return MACs (= counted FLOPs ÷ 2), total and per part.

    ``inputs`` overrides the random input built from ``num_samples``/``batch_size`` (Whisper always gets its window).
    Returns ``total`` and ``parts`` for the whole batch, ``per_clip`` (= total / batch), ``layers`` (per transformer
    layer) and ``by_op`` (aten op → MACs). ``parts['other']`` is whatever was counted outside the known parts.
    The model is put in ``eval()`` mode for the count and restored afterwards.
    """
    mp = resolve_modules(model)
    spec: ArchSpec = spec_from_parts(mp)
    root = mp.root
    windows = whisper_windows(spec, num_samples) if spec.whisper_window is not None else 1
    if inputs is None:
        device = next(root.parameters()).device
        inputs = dummy_inputs(spec, num_samples, batch_size, device, windows)
    batch = int(next(iter(inputs.values())).shape[0]) // windows
    was_training = root.training
    root.eval()
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with eager_attention(root), torch.no_grad(), counter:
            root(**inputs)
    finally:
        root.train(was_training)
    counts = counter.get_flop_counts()

    prefix = type(root).__name__
    names = {id(m): n for n, m in root.named_modules(remove_duplicate=False)}

    def macs_of(module: nn.Module) -> int:
        name = names.get(id(module))
        key = prefix if name == "" else f"{prefix}.{name}"
        return sum(int(v) for v in counts.get(key, {}).values()) // 2

    total = sum(int(v) for v in counts.get("Global", {}).values()) // 2
    groups = part_modules(mp)
    parts = {p: sum(macs_of(m) for m in groups[p]) for p in PARTS}
    parts["other"] = total - sum(v for k, v in parts.items() if k != "other")
    return {
        "total": total,
        "per_clip": total / batch,
        "batch_size": batch,
        "windows": windows if spec.whisper_window is not None else None,
        "parts": parts,
        "layers": [macs_of(m) for m in groups["layers"]],
        "by_op": {str(op): int(v) // 2 for op, v in counts.get("Global", {}).items()},
    }
