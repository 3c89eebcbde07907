"""Parameter counts per part, from the module tree.

Every parameter of the profiled module is assigned to exactly one part (by object identity, shared parameters
counted once), so the parts always sum to ``sum(p.numel() for p in root.parameters())``. Parameters outside the
known parts (``masked_spec_embed``, ``layer_weights``, ...) go to ``other``. Whisper: only the encoder (+ a
classification head) is profiled; the decoder is reported under ``excluded`` and not in the total.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from speechprune.profile.arch import PARTS, part_modules, resolve_modules


def count_params(model: nn.Module) -> dict[str, Any]:
    """Parameter counts of ``model`` per part (see :data:`~speechprune.profile.arch.PARTS`).

    Returns ``parts`` (part → count), ``layers`` (per transformer layer), ``total``, ``trainable``, ``frozen``
    (``requires_grad=False``; Whisper's sinusoidal ``embed_positions`` table is such a frozen parameter),
    ``excluded`` (parameters of modules that are not profiled, e.g. the Whisper decoder) and ``notes``.
    """
    mp = resolve_modules(model)
    groups = part_modules(mp)
    owner: dict[int, str] = {}
    for part in PARTS:
        for module in groups[part]:
            for p in module.parameters():
                owner.setdefault(id(p), part)
    parts = dict.fromkeys(PARTS, 0)
    params = list(mp.root.parameters())  # de-duplicated by torch
    for p in params:
        parts[owner.get(id(p), "other")] += p.numel()
    layers = [sum(p.numel() for p in layer.parameters()) for layer in groups["layers"]]
    total = sum(p.numel() for p in params)
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    seen = {id(p) for p in params}
    excluded = 0
    for module in mp.excluded:
        for p in module.parameters():
            if id(p) not in seen:  # tied weights (Whisper proj_out = decoder embed_tokens) count once
                seen.add(id(p))
                excluded += p.numel()
    notes = []
    if any(not p.requires_grad for m in groups["positional"] for p in m.parameters()):
        notes.append(
            f"the {mp.family} encoder's positional table is a frozen (requires_grad=False) table stored as a "
            f"parameter: {parts['positional']} values, counted under 'positional'"
        )
    if mp.ignored_head:
        notes.append(f"{excluded} parameters of {mp.ignored_head} outside the speech encoder are excluded")
    return {
        "parts": parts,
        "layers": layers,
        "total": total,
        "trainable": total - frozen,
        "frozen": frozen,
        "excluded": excluded,
        "notes": notes,
    }
