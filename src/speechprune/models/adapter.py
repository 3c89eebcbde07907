"""One small interface over five model families.

:class:`SpeechEncoder` wraps a Hugging Face ``transformers`` model (the *root*: the object that is saved, which may
carry a task head or, for Whisper, a decoder) and exposes what every later stage needs: the front end, the list of
transformer layers, sizes, the frame rate, input preparation, and :meth:`SpeechEncoder.hidden_states`.

Layer index convention (used in every flag, file and plot of speechprune)
-----------------------------------------------------------------------
A model with ``L`` transformer layers has ``L + 1`` *states*:

* **state 0** is the input to the first transformer layer.

  - wav2vec 2.0 / HuBERT / WavLM / data2vec-audio, "post-norm" (base) variants: CNN → feature projection →
    + positional conv → encoder LayerNorm (this is what HF's ``hidden_states[0]`` holds).
  - "stable layer norm" (large, pre-norm) variants: CNN → feature projection → + positional conv (no LayerNorm:
    these models normalise inside each layer).
  - Whisper encoder: conv1 → GELU → conv2 → GELU → + sinusoidal positions.

* **state i** (1 ≤ i ≤ L) is the raw output of transformer layer ``i``; layers are numbered 1..L, so "layer i"
  is the one that produces state i (HF's ``encoder.layers[i - 1]``).

* **Final LayerNorm.** Stable-layer-norm variants and Whisper apply one more LayerNorm after the last layer, and HF
  puts it into ``hidden_states[-1]`` only. speechprune does **not** apply it to state L, so state i means the same
  thing at every depth and a model truncated to k layers has exactly the original's state k. Pass
  ``final_norm=True`` to :meth:`SpeechEncoder.hidden_states` to get HF's convention for the last state instead.

States are captured with forward hooks on the layer modules, so one forward pass yields all of them.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from speechprune.errors import LayerIndexError, SpeechpruneError

SAMPLING_RATE = 16_000


@dataclass
class EncoderInputs:
    """A prepared batch: keyword arguments for the encoder module, plus the number of valid frames per clip.

    ``frame_lengths[b]`` frames of clip ``b`` hold speech; the rest is padding (padding-aware pooling uses it).
    """

    model_kwargs: dict[str, torch.Tensor]
    frame_lengths: torch.Tensor
    sample_lengths: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "EncoderInputs":
        """Model inputs moved to ``device`` (floating-point ones cast to ``dtype`` if given); the length
        bookkeeping stays on the CPU."""
        def move(v: torch.Tensor) -> torch.Tensor:
            return v.to(device, dtype=dtype if dtype is not None and v.is_floating_point() else None)

        return EncoderInputs(
            {k: move(v) for k, v in self.model_kwargs.items()},
            self.frame_lengths,
            self.sample_lengths,
            self.extras,
        )


class SpeechEncoder(ABC):
    """Family-independent view of a speech transformer (see the module docstring for the index convention)."""

    family: str = ""

    def __init__(self, model: nn.Module, feature_extractor: Any | None = None, source: str | None = None) -> None:
        self.model = model
        self.feature_extractor = feature_extractor
        self.source = source
        #: Original layer numbers of the layers this model still has (``None``: all of the source's layers).
        self.kept_layers: list[int] | None = None
        self.model.eval()

    # --- structure -------------------------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    @abstractmethod
    def encoder_module(self) -> nn.Module:
        """The module whose forward runs front end + transformer (``Wav2Vec2Model``, ``WhisperEncoder``, …)."""

    @property
    @abstractmethod
    def layers(self) -> nn.ModuleList:
        """The transformer layers; layer ``i`` (1-based) is ``layers[i - 1]``."""

    @property
    @abstractmethod
    def front_end(self) -> nn.Module:
        """The convolutional front end (CNN feature encoder, or Whisper's two convolutions)."""

    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @property
    @abstractmethod
    def frame_rate(self) -> float:
        """Frames per second of audio at the transformer's input."""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_states(self) -> int:
        return self.num_layers + 1

    @property
    def final_norm(self) -> nn.Module | None:
        """The LayerNorm applied after the last layer (stable-layer-norm variants, Whisper), else ``None``."""
        return None

    #: Whether the encoder always sees a fixed input window (Whisper), which ``with_window`` can shorten.
    has_fixed_window: bool = False

    @property
    def profiled_module(self) -> nn.Module:
        """What ``speechprune profile`` measures: the whole model (head included), or for an encoder-decoder
        family the encoder alone."""
        return self.model

    def state_zero_meaning(self) -> str:
        """What state 0 is for this model, in words (``speechprune info``)."""
        return "input to layer 1"

    def check_state_index(self, index: int) -> int:
        """Validate a state index (0..L) and return it; negative indices count from the end like Python."""
        n = self.num_states
        if not -n <= index < n:
            raise LayerIndexError(
                f"state index {index} is out of range for this {self.family} model with {self.num_layers} layers: "
                f"valid states are 0..{self.num_layers} (0 = input to the first layer, i = output of layer i)"
            )
        return index % n

    def check_layer_index(self, index: int) -> int:
        """Validate a layer number (1..L)."""
        if not 1 <= index <= self.num_layers:
            raise LayerIndexError(
                f"layer {index} is out of range for this {self.family} model: layers are numbered "
                f"1..{self.num_layers} (layer i produces state i)"
            )
        return index

    # --- inputs ----------------------------------------------------------------------------------------------
    @abstractmethod
    def prepare(self, waveforms: Sequence[np.ndarray]) -> EncoderInputs:
        """Turn 16 kHz mono float32 waveforms into padded model inputs with frame lengths."""

    @abstractmethod
    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Valid transformer frames for clips of the given lengths in samples."""

    # --- forward ---------------------------------------------------------------------------------------------
    def hidden_states(
        self,
        inputs: EncoderInputs | Sequence[np.ndarray],
        *,
        final_norm: bool = False,
        layers: Iterable[int] | None = None,
        dtype: str | torch.dtype = "fp32",
        device: str | torch.device | None = None,
    ) -> list[torch.Tensor]:
        """Return the L+1 states (each ``B × T × D``, float32) from one forward pass.

        ``layers`` (state indices) limits what is returned; the list then follows the requested order.
        ``dtype="bf16"`` runs under autocast when the weights are fp32 (about 2× faster on CPUs with AMX,
        validate before trusting analyses made with it); when the weights are already bf16 (what
        ``dtype="bf16"`` means on CUDA, see :func:`speechprune.utils.device.bf16_weights`) the inputs are cast to
        bf16 and no autocast runs. Inputs go to the model's device (``device`` only names it: ``"cuda"`` for a
        model on ``cuda:1`` means ``cuda:1``).
        """
        if not isinstance(inputs, EncoderInputs):
            inputs = self.prepare(inputs)
        param = next(self.model.parameters())
        device = param.device if device is None or torch.device(device).type == param.device.type \
            else torch.device(device)
        inputs = inputs.to(device, dtype=param.dtype if param.dtype != torch.float32 else None)
        if param.dtype == torch.bfloat16:
            dtype = "fp32"  # bf16 weights: plain bf16 compute, no autocast
        wanted = None if layers is None else [self.check_state_index(i) for i in layers]
        captured: dict[int, torch.Tensor] = {}
        hooks = self._install_hooks(captured)
        try:
            with torch.inference_mode(), _autocast(dtype, device):
                self._run_encoder(inputs)
        finally:
            for h in hooks:
                h.remove()
        if len(captured) != self.num_states:
            raise SpeechpruneError(
                f"captured {len(captured)} of {self.num_states} states; is layerdrop active (model in train mode)?"
            )
        if final_norm and self.final_norm is not None:
            with torch.inference_mode():
                captured[self.num_layers] = self.final_norm(captured[self.num_layers])
        order = wanted if wanted is not None else range(self.num_states)
        return [captured[i].float() for i in order]

    def _install_hooks(self, captured: dict[int, torch.Tensor]) -> list[Any]:
        def pre_hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            captured[0] = args[0] if args else kwargs["hidden_states"]

        def make_hook(i: int):
            def hook(_mod: nn.Module, _args: tuple, output: Any) -> None:
                captured[i] = output[0] if isinstance(output, (tuple, list)) else output

            return hook

        hooks = [self.layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
        hooks += [layer.register_forward_hook(make_hook(i + 1)) for i, layer in enumerate(self.layers)]
        return hooks

    @abstractmethod
    def _run_encoder(self, inputs: EncoderInputs) -> Any:
        """Run the encoder module on prepared inputs (its output is not used; hooks collect the states)."""

    def encode(self, inputs: EncoderInputs | Sequence[np.ndarray]) -> torch.Tensor:
        """The model's own last output (``last_hidden_state``, final norm included), for comparisons."""
        if not isinstance(inputs, EncoderInputs):
            inputs = self.prepare(inputs)
        param = next(self.model.parameters())
        with torch.inference_mode():
            return self._run_encoder(inputs.to(param.device, param.dtype)).last_hidden_state

    # --- surgery ---------------------------------------------------------------------------------------------
    def keep_layers(self, k: int) -> "SpeechEncoder":
        """A copy that keeps layers 1..k (state k of the copy equals state k of the original)."""
        if not 1 <= k <= self.num_layers:
            raise LayerIndexError(
                f"cannot keep {k} layers of a {self.num_layers}-layer {self.family} model: choose 1..{self.num_layers}"
            )
        return self.select_layers(list(range(1, k + 1)))

    def drop_layers(self, layers: Iterable[int]) -> "SpeechEncoder":
        """A copy without the given layers (numbered 1..L). At least one layer must remain."""
        drop = {self.check_layer_index(i) for i in layers}
        keep = [i for i in range(1, self.num_layers + 1) if i not in drop]
        if not keep:
            raise LayerIndexError(f"cannot drop all {self.num_layers} layers: at least one must remain")
        return self.select_layers(keep)

    def select_layers(self, keep: Sequence[int]) -> "SpeechEncoder":
        """A deep copy whose transformer keeps exactly the listed layers (1-based, in increasing order)."""
        keep = [self.check_layer_index(i) for i in keep]
        if sorted(set(keep)) != list(keep):
            raise LayerIndexError(f"layers to keep must be increasing and unique, got {keep}")
        if not keep:
            raise LayerIndexError("at least one layer must remain")
        new = copy.deepcopy(self)
        origin = self.kept_layers or list(range(1, self.num_layers + 1))
        new.kept_layers = [origin[i - 1] for i in keep]
        new._apply_layer_selection(keep)
        new.model.eval()
        return new

    @abstractmethod
    def _apply_layer_selection(self, keep: Sequence[int]) -> None:
        """Edit ``self.model`` in place so that only ``keep`` layers remain, with the config updated."""

    def _slice_layer_weights(self, keep: Sequence[int]) -> None:
        """Classification heads with ``use_weighted_layer_sum`` hold one weight per state: keep those of the
        states that survive (state 0 and the kept layers' outputs)."""
        weights = getattr(self.model, "layer_weights", None)
        if isinstance(weights, nn.Parameter) and weights.numel() == self.num_states:
            idx = torch.tensor([0, *keep])
            self.model.layer_weights = nn.Parameter(weights.detach()[idx].clone())

    # --- persistence -----------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, **kwargs: Any) -> Path:
        """Save model (safetensors + config) and feature extractor so that plain ``from_pretrained`` reloads it."""
        from speechprune.models.io import save_encoder

        return save_encoder(self, path, **kwargs)

    def fingerprint(self) -> str:
        """Identity of the weights + config + input preparation, for feature-cache keys."""
        from speechprune.utils.fingerprint import hash_json, hash_state_dict

        cfg = self.config.to_dict()
        cfg.pop("transformers_version", None)
        return hash_json(
            {
                "family": self.family,
                "weights": hash_state_dict(self.encoder_module.state_dict()),
                "config": cfg,
                "prep": self.preparation_options(),
            }
        )

    def preparation_options(self) -> dict[str, Any]:
        """Options of input preparation that change the numbers (normalisation, masks, window)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (for ``speechprune info``)."""
        return {
            "family": self.family,
            "class": type(self.model).__name__,
            "source": self.source,
            "num_layers": self.num_layers,
            "num_states": self.num_states,
            "hidden_size": self.hidden_size,
            "frame_rate_hz": self.frame_rate,
            "final_norm_after_last_layer": self.final_norm is not None,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            **self.preparation_options(),
        }


class _autocast:
    """``torch.autocast`` for bf16, a no-op for fp32 (kept tiny so the call site stays readable)."""

    def __init__(self, dtype: str | torch.dtype, device: torch.device) -> None:
        name = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, dtype) if not isinstance(dtype, str) else dtype
        if name not in ("fp32", "bf16"):
            raise SpeechpruneError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
        self._ctx = torch.autocast(device.type, dtype=torch.bfloat16) if name == "bf16" else None
        if name == "bf16" and device.type == "cpu":
            from speechprune.utils.hardware import cpu_has_fast_bf16

            if not cpu_has_fast_bf16():
                import warnings

                warnings.warn(
                    "this CPU has no native bf16 (no AVX-512-BF16/AMX): bf16 autocast runs a slow fallback, "
                    "often far slower than fp32; use dtype='fp32'", RuntimeWarning, stacklevel=3,
                )

    def __enter__(self) -> None:
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)

