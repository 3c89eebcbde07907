"""Physical pruning: eval masks → smaller tensors, soft mask values folded into the weights.

Why a state-dict transformation: the pruned model is built the same way a saved one is loaded — stock class from
a config (plus, when the stock config cannot describe the result,
:func:`~speechprune.models.pruned.apply_structure` to shape the layers),
then ``load_state_dict`` of sliced tensors. So the in-memory result and the reloaded export are the same object
by construction, and every key keeps its stock name.

What is removed and folded (``s`` = soft eval-mask value of a kept unit, ``g`` = layer-gate value):

* conv ``i`` channels: rows of its weight/bias and norm; the consumer's input columns × ``s`` (next conv, or the
  feature projection's Linear; its LayerNorm loses the same channels); e.g. Whisper: ``conv1`` rows, ``conv2``
  columns;
* heads: ``q``/``k``/``v`` rows of removed heads, ``out_proj`` columns × ``s`` × ``g``, ``out_proj`` bias × ``g``
  (WavLM: ``gru_rel_pos_const`` sliced to the kept heads; the bucket embedding keeps all original heads);
* FFN units: first-linear rows, second-linear columns × ``s`` × ``g``, its bias × ``g``;
* a layer gate at 0 removes the whole sub-layer including ``out_proj``'s bias.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from speechprune.compress.structured.cost import gate_name
from speechprune.compress.structured.sites import ModelSites
from speechprune.models.pruned import STRUCTURE_FORMAT, STRUCTURE_KEY, pruned_class, stock_class
from speechprune.models.registry import family_of

__all__ = ["STRUCTURE_FORMAT", "STRUCTURE_KEY", "fits_stock", "plan_structure", "prune_model", "pruned_state_dict"]


def _kept(mask: torch.Tensor | None, n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the kept units and their soft mask values, both on the mask's device (``device`` without one)."""
    if mask is None:
        return torch.arange(n, device=device), torch.ones(n, device=device)
    idx = torch.nonzero(mask != 0).flatten()
    return idx, mask.detach().float()[idx]


def plan_structure(sites: ModelSites, masks: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The shapes the pruned model will have: conv channels, per layer kept heads (original indices), FFN size and
    whether each sub-layer survives (its output bias)."""
    conv = []
    for c in sites.convs:
        m = masks.get(gate_name("conv", c.index))
        conv.append(c.channels if m is None else int((m != 0).sum()))
    layers = []
    for site in sites.layers:
        n = site.number
        att = masks.get(gate_name("attlayer", n))
        ffn = masks.get(gate_name("ffnlayer", n))
        att_on = att is None or bool(att[0] != 0)
        ffn_on = ffn is None or bool(ffn[0] != 0)
        base_heads = list(getattr(site.attn, "kept_heads", range(site.num_heads)))
        heads, _ = _kept(masks.get(gate_name("head", n)), site.num_heads)
        layers.append({
            "heads": [base_heads[i] for i in heads.tolist()] if att_on else [],
            "full_heads": int(getattr(site.attn, "full_heads", site.num_heads)) if site.wavlm else site.num_heads,
            "attention_bias": att_on and site.attn.out_proj.bias is not None,
            "intermediate_size": int(_kept(masks.get(gate_name("interm", n)), site.ffn_dim)[0].numel()) if ffn_on
            else 0,
            "ffn_bias": ffn_on and site.fc2.bias is not None,
        })
    return {"format": STRUCTURE_FORMAT, "family": sites.family, "conv_channels": conv, "layers": layers}


def fits_stock(structure: dict[str, Any], sites: ModelSites) -> bool:
    """Whether a stock config describes the result: every layer keeps all its heads and both biases, all FFNs
    have the same non-zero size, and the family's config can describe the conv channels (Whisper: ``conv1``
    keeps ``d_model`` channels)."""
    layers = structure["layers"]
    sizes = {lay["intermediate_size"] for lay in layers}
    if len(sizes) != 1 or 0 in sizes:
        return False
    for lay, site in zip(layers, sites.layers):
        if lay["heads"] != list(range(lay["full_heads"])) or site.num_heads != lay["full_heads"]:
            return False
        if not lay["attention_bias"] or not lay["ffn_bias"]:
            return False
    config = copy.deepcopy(sites.parts.model.config)
    return family_of(sites.parts.model).set_conv_channels(config, list(structure["conv_channels"]))


def pruned_state_dict(model: nn.Module, sites: ModelSites, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with pruned tensors sliced and soft mask values folded in."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = {id(m): n for n, m in model.named_modules()}

    def key(module: nn.Module, param: str) -> str:
        prefix = names[id(module)]
        return f"{prefix}.{param}" if prefix else param

    def rows(module: nn.Module, idx: torch.Tensor) -> None:
        for p in ("weight", "bias"):
            k = key(module, p)
            if k in sd and sd[k] is not None:
                sd[k] = sd[k].index_select(0, idx.to(sd[k].device))

    def cols(module: nn.Module, idx: torch.Tensor, scale: torch.Tensor) -> None:
        k = key(module, "weight")
        w = sd[k].index_select(1, idx.to(sd[k].device))
        shape = [1] * w.dim()
        shape[1] = -1
        sd[k] = w * scale.to(w.device, w.dtype).view(shape)

    for i in sites.gatable_convs:
        m = masks.get(gate_name("conv", i))
        if m is None:
            continue
        c = sites.convs[i]
        idx, s = _kept(m, c.channels)
        rows(c.conv, idx)
        if c.norm is not None:
            rows(c.norm, idx)
        if i < len(sites.convs) - 1:
            cols(sites.convs[i + 1].conv, idx, s)
        else:
            if sites.proj_norm is not None:
                rows(sites.proj_norm, idx)
            cols(sites.projection, idx, s)
    for site in sites.layers:
        _prune_layer(site, masks, sd, key, rows, cols)
    return sd


def _units(masks: dict[str, torch.Tensor], unit: str, layer: str, n: int, size: int) -> tuple[Any, Any, float] | None:
    """Kept units, their soft values and the layer-gate value of one sub-layer (``None``: not gated at all);
    a closed layer gate keeps no unit."""
    lg, um = masks.get(gate_name(layer, n)), masks.get(gate_name(unit, n))
    if lg is None and um is None:
        return None
    g = 1.0 if lg is None else float(lg[0])
    idx, s = _kept(um, size, None if lg is None else lg.device)
    return (idx[:0], s[:0], g) if g == 0.0 else (idx, s, g)


def _prune_layer(site: Any, masks: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], key: Any, rows: Any,
                 cols: Any) -> None:
    n, attn, dh = site.number, site.attn, site.head_dim
    att = _units(masks, "head", "attlayer", n, site.num_heads)
    if att is not None:
        heads, s, g = att
        unit = (heads[:, None] * dh + torch.arange(dh, device=heads.device)[None, :]).flatten()
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            rows(proj, unit)
        cols(attn.out_proj, unit, s.repeat_interleave(dh) * g)
        _scale_or_drop_bias(sd, key(attn.out_proj, "bias"), g)
        if site.wavlm:
            k = key(attn, "gru_rel_pos_const")
            sd[k] = sd[k].index_select(1, heads.to(sd[k].device))
    ffn = _units(masks, "interm", "ffnlayer", n, site.ffn_dim)
    if ffn is not None:
        units, s, g = ffn
        rows(site.fc1, units)
        cols(site.fc2, units, s * g)
        _scale_or_drop_bias(sd, key(site.fc2, "bias"), g)


def _scale_or_drop_bias(sd: dict[str, torch.Tensor], k: str, g: float) -> None:
    if k not in sd:
        return
    if g == 0.0:
        del sd[k]
    else:
        sd[k] = sd[k] * g


def prune_model(model: nn.Module, sites: ModelSites, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Build the pruned model (eval mode): stock class when a stock config fits, else the registered pruned class
    (see :mod:`speechprune.models.pruned`) with :data:`STRUCTURE_KEY` in its config."""
    fam = family_of(model)
    structure = plan_structure(sites, masks)
    sd = pruned_state_dict(model, sites, masks)
    config = copy.deepcopy(model.config)
    if hasattr(config, STRUCTURE_KEY):
        delattr(config, STRUCTURE_KEY)
    fam.set_conv_channels(config, list(structure["conv_channels"]))
    stock = stock_class(type(model))
    if fits_stock(structure, sites):
        fam.set_ffn_size(config, structure["layers"][0]["intermediate_size"])
        cls = stock
    else:
        setattr(config, STRUCTURE_KEY, structure)
        cls = pruned_class(stock)
    new = cls(config)
    ref = next(model.parameters())
    new.to(device=ref.device)
    new.load_state_dict(sd, strict=True)
    return new.eval()
