"""Guards of the training loop: options that would train garbage are refused up front, and a loss that stops
being finite ends the run with a clear error instead of saving a NaN model that reports an accuracy."""

from __future__ import annotations

import math
from typing import Any

from speechprune.errors import SpeechpruneError
from speechprune.utils.checks import check_finite, check_seed


class DivergedError(SpeechpruneError):
    """The training loss became NaN or infinite."""


def check_numbers(cfg: Any) -> None:
    """Finite learning rates and weight decay, a valid seed (on any object with TrainConfig's fields)."""
    check_finite(cfg.lr, "lr (learning rate)", low=0.0, low_open=True)
    if cfg.head_lr is not None:
        check_finite(cfg.head_lr, "head_lr (head learning rate)", low=0.0, low_open=True)
    check_finite(cfg.weight_decay, "weight_decay", low=0.0)
    if getattr(cfg, "max_grad_norm", None) is not None:
        check_finite(cfg.max_grad_norm, "max_grad_norm", low=0.0, low_open=True)
    check_seed(cfg.seed)


def check_loss(loss: Any, *, epoch: int, step: int, lr: float) -> None:
    """Stop on a non-finite loss (``loss`` is a float or a 0-d tensor). Nothing of the run is kept by the caller."""
    value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
    if not math.isfinite(value):
        raise DivergedError(
            f"training diverged: the loss became {value} at epoch {epoch}, step {step} (learning rate {lr:g}); "
            "nothing was saved — lower --lr / --head-lr or check the data")


def check_weights(model: Any) -> None:
    """Every parameter is finite (a last step can turn weights infinite while its own loss was still finite)."""
    import torch

    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        raise DivergedError(f"training diverged: {len(bad)} weight tensor(s) are NaN or infinite (e.g. {bad[0]}); "
                            "nothing was saved — lower --lr / --head-lr")


def discard_run(work_dir: Any) -> None:
    """Remove what a diverged run wrote: its checkpoint folder, or the whole ``.<out>.training`` folder it sits in
    (distillation trains two stages inside one), so that no resume can continue from it."""
    import shutil
    from pathlib import Path

    work = Path(work_dir)
    top = next((p for p in [work, *work.parents] if p.name.startswith(".") and p.name.endswith(".training")), work)
    shutil.rmtree(top, ignore_errors=True)
