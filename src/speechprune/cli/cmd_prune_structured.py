"""``speechprune prune structured``: HJ-Pruning of a fine-tuned classifier to a size/MAC budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from speechprune.cli.cmd_finetune import split_flags, split_list, split_options
from speechprune.cli.cmd_prune import prune_app
from speechprune.cli.common import AUDIO_COLUMN_HELP, DATA_HELP, REPORT_TO_HELP, console
from speechprune.cli.config import config_option
from speechprune.utils.device import DEVICE_HELP

_so = split_options()


@prune_app.command("structured")
def structured_cmd(
    model: str = typer.Argument(..., help="A fine-tuned classifier folder (`speechprune finetune` output)."),
    data: str = typer.Argument(..., help=DATA_HELP),
    audio_column: Optional[str] = typer.Option(None, help=AUDIO_COLUMN_HELP),
    label: str = typer.Option(..., "--label", "-l", help="Label column (the classifier's task)."),
    out: Path = typer.Option(..., "--out", "-o", help="Pruned model folder (written when everything has finished) (transformers: output_dir)."),
    budget: str = typer.Option("macs=0.5", "--budget", "-b", help="Fraction of the cost to KEEP: macs=0.5 | size=0.5 | frontend-macs=0.6,transformer-macs=0.4."),
    structures: List[str] = typer.Option(["conv", "head", "interm"], "--structures", help="What to gate: conv, head, interm, attlayer, ffnlayer (repeatable or comma-separated). Without conv: transformer-only pruning."),
    group: Optional[str] = typer.Option(None, help="Group column (e.g. speaker) for --test-groups/--val-groups."),
    split_column: Optional[str] = _so["split_column"],
    test_groups: List[str] = _so["test_groups"],
    val_groups: List[str] = _so["val_groups"],
    test_fraction: float = _so["test_fraction"],
    val_fraction: float = _so["val_fraction"],
    epochs: int = typer.Option(5, min=1, help="Training epochs with gates (transformers: num_train_epochs)."),
    batch_size: int = typer.Option(8, min=1, help="Clips per batch (per process) (transformers: per_device_train_batch_size)."),
    grad_accum: int = typer.Option(1, min=1, help="Gradient accumulation steps (transformers: gradient_accumulation_steps)."),
    lr: float = typer.Option(5e-5, help="Learning rate of the model weights (transformers: learning_rate)."),
    head_lr: Optional[float] = typer.Option(None, help="Learning rate of the head (default: --lr)."),
    p0_keep: float = typer.Option(0.01, help="Initial drop rate of conv-channel/head/layer gates (DPHuBERT: 0.01, i.e. log alpha 4.6; 0.1 moves faster in short runs)."),
    gate_lr: float = typer.Option(0.2, help="Learning rate of the gates' log alpha."),
    reg_lr: float = typer.Option(0.2, help="Learning rate of the Lagrange multipliers (gradient ascent)."),
    reg_update: str = typer.Option("adamw", help="adamw (AdamW group with lr = -reg_lr) | sgd (plain ascent)."),
    target_warmup: float = typer.Option(0.5, help="Share of the updates over which the target ramps from 0 to the budget."),
    warmup_ratio: float = typer.Option(0.1, help="Share of the steps used for learning-rate warm-up (transformers: warmup_ratio)."),
    schedule: str = typer.Option("linear", help="linear | cosine | constant | constant_with_warmup (transformers: lr_scheduler_type)."),
    weight_decay: float = typer.Option(0.0, help="AdamW weight decay of the model weights (transformers: weight_decay)."),
    freeze_front_end: bool = typer.Option(True, help="Keep the conv weights fixed (their channel gates still learn)."),
    distill_weight: float = typer.Option(0.0, help="Weight of L1 + cosine distillation to the unpruned model's layers (0: off)."),
    finetune_epochs: int = typer.Option(2, min=0, help="Plain fine-tuning epochs of the pruned model (no gates); 0 = pure HJ-Pruning. On Whisper base 2 epochs took 50 %-MAC accuracy from 95 % to 99.4 % of the unpruned model (EmoDB)."),
    calibrate: bool = typer.Option(True, help="After training, shift gate log alphas so that the final cost just meets the budget."),
    tolerance: float = typer.Option(0.02, help="Allowed excess of the kept fraction over the budget."),
    patience: Optional[int] = typer.Option(None, min=1, help="Stop after this many eligible epochs without improvement (transformers: early_stopping_patience)."),
    seed: int = typer.Option(0, help="Seed for data order, splits and gate sampling (transformers: seed)."),
    max_seconds: Optional[float] = typer.Option(None, help="Cut clips to their first N seconds."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its last finished epoch (transformers: resume_from_checkpoint)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder and any interrupted run."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    report_to: str = typer.Option("none", help=REPORT_TO_HELP),
    mixed_precision: str = typer.Option("fp32", help="Training precision: fp32 | bf16 | fp16, autocast; bf16 needs a GPU or a CPU with native bf16 (transformers: bf16 / fp16)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    config: Optional[str] = config_option(),
) -> None:
    """Structured pruning (HJ-Pruning) of a fine-tuned classifier to a budget: HardConcrete gates on conv
    channels, attention heads and FFN units, trained with the task loss plus a Lagrangian that drives the
    expected cost to the budget (target ramped from 0 over --target-warmup); then the units are removed
    physically.

    Budgets are the fraction to KEEP, in (0, 1): macs=0.5 (HJ-Pruning-MAC), size=0.5 (params, HJ-Pruning-Size),
    frontend-macs=0.5,transformer-macs=0.5 (HJ-Pruning-SepMAC). The saved model is the one of the best validation
    epoch after the target warm-up (the budget only holds from then on). OUT holds the model, training.json
    (history, budgets: expected vs final cost, budget error, calibration) and metrics.json. A folder that the
    stock config cannot describe (per-layer heads/FFN sizes) loads with `speechprune.models.load_encoder(OUT)` or
    `speechprune.compress.structured.load_pruned(OUT)`. Checkpoints after every epoch; --resume continues.

        speechprune prune structured runs/fsdd-word data/fsdd -l word --split-column split --budget macs=0.5 -o runs/fsdd-hj50
    """
    from speechprune import api
    from speechprune.compress.structured.train import PruneOptions
    from speechprune.train.loop import TrainConfig

    opts = PruneOptions(budgets=budget, structures=tuple(split_list(structures)), target_warmup=target_warmup,
                        p0_keep=p0_keep, gate_lr=gate_lr, reg_lr=reg_lr, reg_update=reg_update, distill_weight=distill_weight,
                        finetune_epochs=finetune_epochs, calibrate=calibrate, tolerance=tolerance)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, lr=lr, head_lr=head_lr,
                      weight_decay=weight_decay, schedule=schedule, warmup_ratio=warmup_ratio,
                      freeze_front_end=freeze_front_end, patience=patience, seed=seed, max_seconds=max_seconds,
                      device=device, mixed_precision=mixed_precision, report_to=report_to)
    # the split the classifier was fine-tuned with (recorded in its training.json) unless one is given
    split = split_flags(split_column, test_groups, val_groups, test_fraction, val_fraction)
    res = api.prune_structured(model, data, label, out, opts, cfg, split, group=group, resume=resume,
                               overwrite=overwrite, audio_column=audio_column, progress=progress)
    if "model_dir" not in res:
        return
    for name, b in res["budgets"].items():
        console.print(f"{name}: kept {b['final_keep']:.3f} of the full cost (budget {b['budget_keep']:g}, "
                      f"error {b['budget_error']:+.3f}; expected {b['expected_keep']:.3f})")
    if "test" in res:
        console.print(f"test accuracy {res['test']['accuracy']:.4f}, macro-F1 {res['test']['macro_f1']:.4f}")
    console.print(f"[green]model[/green] → {out}")
    typer.echo(json.dumps({"model_dir": str(out), "test_accuracy": res.get("test", {}).get("accuracy"),
                           "budget_met": res["budget_met"], "max_abs_budget_error": res["max_abs_budget_error"]}))


def register(app: typer.Typer) -> None:
    """The command is defined on ``prune_app`` at import (``cmd_prune`` adds ``prune_app`` to the app)."""
