"""Gates on a stock transformers model, put in with hooks, so the model's own code and weights stay untouched.

Why hooks: the wav2vec2 family and Whisper are used as stock classes everywhere in speechprune (and must reload
with plain ``from_pretrained``). Forward (pre-)hooks multiply masks into existing tensors; nothing is copied from
transformers' model code except WavLM's attention, whose fused ``F.multi_head_attention_forward`` has no place
for a per-head mask (see :mod:`.modules`).

Mask placement (docs/methods.md §3, DPHuBERT):

* conv ``i`` (not the last): its output channels, after norm and GELU (forward hook on the conv layer block);
  Whisper's ``conv1``: after its GELU, i.e. on ``conv2``'s input (the GELU is a function call, not a module);
* the last wav2vec2 conv: on the feature projection's *input* (after its LayerNorm), so the soft mask value can
  be folded into ``projection``'s columns; the LayerNorm's statistics use the kept channels only. LayerNorms over
  channels of gated convs (``feat_extract_norm="layer"``) likewise. This keeps pruning exact (:mod:`.modules`);
* heads: the per-head attention output before ``out_proj`` (pre-hook on ``out_proj``);
* FFN units: after activation and dropout (pre-hook on the second FFN linear);
* layer gates (``attlayer``, ``ffnlayer``): the sub-layer output (hook on ``out_proj`` / the second FFN linear).

Masks are drawn once per forward of the speech encoder (one sample shared by the batch, as DPHuBERT does): a
forward pre-hook on the encoder draws fresh samples when the encoder is in training mode and uses the
deterministic eval masks otherwise, so any outer module (a classifier wrapper, the training loop) just calls the
model as usual.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from speechprune.compress.structured.cost import CostModel, gate_name
from speechprune.compress.structured.hardconcrete import P0_FFN, P0_KEEP, HardConcrete
from speechprune.compress.structured.sites import DEFAULT_STRUCTURES, check_structures, find_sites
from speechprune.models.modules import masked_layer_norm, wavlm_attention


class GatedModel(nn.Module):
    """A stock speech model plus HardConcrete gates on the chosen ``structures``.

    ``gates`` is an ``nn.ModuleDict`` keyed ``conv_<i>``, ``head_<l>``, ``interm_<l>``, ``attlayer_<l>``,
    ``ffnlayer_<l>`` (see :func:`~.cost.gate_name`). ``forward`` calls the wrapped model. The gated model is
    the wrapped model itself (hooks are installed on it); :meth:`detach` removes them.
    """

    def __init__(
        self,
        model: nn.Module,
        structures: tuple[str, ...] | list[str] = DEFAULT_STRUCTURES,
        *,
        p0_keep: float = P0_KEEP,
        p0_ffn: float = P0_FFN,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.structures = check_structures(tuple(structures))
        self.sites = find_sites(model)
        self.cost_model = CostModel(self.sites)
        self.gates = nn.ModuleDict()
        ref = next(model.parameters())
        # the initial gates come from their own generator (seeded): the same seed gives the same gates whatever ran
        # before in the process (None: torch's global generator)
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        if "conv" in self.structures:
            for i in self.sites.gatable_convs:
                self.gates[gate_name("conv", i)] = HardConcrete(self.sites.convs[i].channels, p0_keep, min_keep=1,
                                                                generator=gen)
        for site in self.sites.layers:
            n = site.number
            if "head" in self.structures and site.num_heads > 0:
                self.gates[gate_name("head", n)] = HardConcrete(site.num_heads, p0_keep, generator=gen)
            if "interm" in self.structures and site.ffn_dim > 0:
                self.gates[gate_name("interm", n)] = HardConcrete(site.ffn_dim, p0_ffn, generator=gen)
            if "attlayer" in self.structures:
                self.gates[gate_name("attlayer", n)] = HardConcrete(1, p0_keep, generator=gen)
            if "ffnlayer" in self.structures:
                self.gates[gate_name("ffnlayer", n)] = HardConcrete(1, p0_keep, generator=gen)
        self.gates.to(ref.device)
        self._masks: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._patched: list[nn.Module] = []
        self._install()

    # --- forward ------------------------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def mask(self, name: str) -> torch.Tensor:
        """The mask of gate ``name`` for the current forward (drawn on first use after the encoder started)."""
        m = self._masks.get(name)
        if m is None:
            gate = self.gates[name]
            m = gate.sample() if self.sites.base.training else gate.eval_mask()
            self._masks[name] = m
        return m

    def eval_masks(self) -> dict[str, torch.Tensor]:
        """The deterministic eval mask of every gate (what :meth:`prune` removes and folds)."""
        return {name: gate.eval_mask() for name, gate in self.gates.items()}

    # --- cost -----------------------------------------------------------------------------------------------------
    def expected_counts(self) -> dict[str, torch.Tensor]:
        """E[L0] of every gate (differentiable)."""
        return {name: gate.l0_norm() for name, gate in self.gates.items()}

    def final_counts(self) -> dict[str, int]:
        """Non-zero entries of every eval mask; a closed layer gate zeroes its sub-layer's heads/units."""
        counts = {name: int((m != 0).sum()) for name, m in self.eval_masks().items()}
        for name, value in list(counts.items()):
            kind, n = name.split("_")
            if kind in ("attlayer", "ffnlayer") and value == 0:
                counts[gate_name("head" if kind == "attlayer" else "interm", int(n))] = 0
        return counts

    def expected_cost(self, kind: str = "macs", part: str = "total", num_samples: int = 16_000) -> torch.Tensor:
        """Differentiable expected cost (float64 scalar) from the gates' expected kept counts."""
        return self.cost_model.cost(self.expected_counts(), kind, part, num_samples)

    def full_cost(self, kind: str = "macs", part: str = "total", num_samples: int = 16_000) -> int:
        """Cost of the unpruned model (the profiler's count)."""
        return self.cost_model.full(kind, part, num_samples)

    def final_cost(self, kind: str = "macs", part: str = "total", num_samples: int = 16_000) -> int:
        """Cost of the model :meth:`prune` would return (eval masks binarised)."""
        return round(float(self.cost_model.cost(self.final_counts(), kind, part, num_samples)))

    def min_cost(self, kind: str = "macs", part: str = "total", num_samples: int = 16_000) -> float:
        """The lowest cost these gates can reach (1 channel per conv, no heads, no FFN units)."""
        floors = {name: float(g.min_keep) for name, g in self.gates.items()}
        return self.cost_model.minimum(kind, part, num_samples, floors)

    # --- parameters -------------------------------------------------------------------------------------------
    def gate_parameters(self) -> Iterator[nn.Parameter]:
        """The ``log_alpha`` of every gate (their own optimizer group and learning rate)."""
        return self.gates.parameters()

    def model_parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    # --- pruning --------------------------------------------------------------------------------------------------
    def prune(self) -> nn.Module:
        """A physically pruned copy of the model (eval mode) equal to this gated model in eval mode."""
        from speechprune.compress.structured.prune import prune_model

        return prune_model(self.model, self.sites, self.eval_masks())

    def detach(self) -> nn.Module:
        """Remove all hooks and return the plain model (its weights were never changed)."""
        for h in self._handles:
            h.remove()
        for m in self._patched:
            m.__dict__.pop("forward", None)
        self._handles.clear()
        self._patched.clear()
        return self.model

    # --- hooks ---------------------------------------------------------------------------------------------------
    def _install(self) -> None:
        s = self.sites
        self._handles.append(s.base.register_forward_pre_hook(lambda *_: self._masks.clear()))
        for i in s.gatable_convs:
            name = gate_name("conv", i)
            if name not in self.gates:
                continue
            conv = s.convs[i]
            if isinstance(conv.norm, nn.LayerNorm):
                self._handles.append(conv.norm.register_forward_hook(self._masked_norm_hook(name)))
            if i < len(s.convs) - 1 and conv.block is not None:  # the block's output is the activated conv
                self._handles.append(conv.block.register_forward_hook(self._scale_output(name, dim=1)))
            elif i < len(s.convs) - 1:  # activation applied functionally (Whisper): on the next conv's input
                self._handles.append(s.convs[i + 1].conv.register_forward_pre_hook(self._scale_input(name, dim=1)))
            else:  # last conv: on the feature projection's input, after its (masked-statistics) LayerNorm
                if isinstance(s.proj_norm, nn.LayerNorm):
                    self._handles.append(s.proj_norm.register_forward_hook(self._masked_norm_hook(name)))
                self._handles.append(s.projection.register_forward_pre_hook(self._scale_input(name, dim=-1)))
        for site in s.layers:
            n = site.number
            head, att = gate_name("head", n), gate_name("attlayer", n)
            interm, ffn = gate_name("interm", n), gate_name("ffnlayer", n)
            if site.wavlm and (head in self.gates or att in self.gates):
                self._patch_wavlm(site.attn, head, att)
            else:
                if head in self.gates:
                    self._handles.append(site.attn.out_proj.register_forward_pre_hook(
                        self._scale_input(head, dim=-1, repeat=site.head_dim)))
                if att in self.gates:
                    self._handles.append(site.attn.out_proj.register_forward_hook(self._scale_output(att, dim=-1)))
            if interm in self.gates:
                self._handles.append(site.fc2.register_forward_pre_hook(self._scale_input(interm, dim=-1)))
            if ffn in self.gates:
                self._handles.append(site.fc2.register_forward_hook(self._scale_output(ffn, dim=-1)))

    def _vector(self, name: str, x: torch.Tensor, dim: int, repeat: int = 1) -> torch.Tensor:
        m = self.mask(name).to(x.dtype)
        if repeat > 1:
            m = m.repeat_interleave(repeat)
        if dim == 1 and x.dim() == 3:
            return m[None, :, None]
        return m

    def _scale_input(self, name: str, dim: int, repeat: int = 1) -> Any:
        def hook(_mod: nn.Module, args: tuple) -> tuple:
            x = args[0]
            return (x * self._vector(name, x, dim, repeat), *args[1:])

        return hook

    def _scale_output(self, name: str, dim: int) -> Any:
        def hook(_mod: nn.Module, _args: tuple, out: Any) -> Any:
            if isinstance(out, tuple):
                return (out[0] * self._vector(name, out[0], dim), *out[1:])
            return out * self._vector(name, out, dim)

        return hook

    def _masked_norm_hook(self, name: str) -> Any:
        def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            keep = self.mask(name) != 0
            if bool(keep.all()):
                return None
            return masked_layer_norm(args[0], mod, keep)

        return hook

    def _patch_wavlm(self, attn: nn.Module, head: str, att: str) -> None:
        kept = list(getattr(attn, "kept_heads", range(int(attn.num_heads))))
        full = int(getattr(attn, "full_heads", attn.num_heads))
        owner = self

        def forward(self_: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    position_bias: torch.Tensor | None = None, index: int = 0, **kwargs: Any) -> Any:
            hm = owner.mask(head) if head in owner.gates else None
            lg = owner.mask(att) if att in owner.gates else None
            return wavlm_attention(self_, hidden_states, attention_mask, position_bias, kept, full, hm, lg)

        attn.forward = types.MethodType(forward, attn)
        self._patched.append(attn)


def attach_gates(
    model: nn.Module, structures: tuple[str, ...] | list[str] = DEFAULT_STRUCTURES, **kwargs: Any
) -> GatedModel:
    """Put HardConcrete gates on ``model`` (a stock wav2vec2/HuBERT/WavLM/data2vec-audio/Whisper model of any
    supported class, or a :class:`~speechprune.models.adapter.SpeechEncoder`). Unsupported families raise
    :class:`~speechprune.errors.UnsupportedModelError`."""
    if not isinstance(model, nn.Module) and hasattr(model, "model"):
        model = model.model
    return GatedModel(model, structures, **kwargs)
