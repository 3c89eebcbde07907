"""``speechprune finetune``: the standard classification head on any supported model, trained with accelerate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from speechprune.cli.common import AUDIO_COLUMN_HELP, DATA_HELP, REPORT_TO_HELP, console
from speechprune.cli.config import config_option
from speechprune.data.splits import SplitOptions
from speechprune.utils.device import DEVICE_HELP


def split_list(values: List[str] | None) -> List[str]:
    return [v.strip() for item in values or [] for v in str(item).split(",") if v.strip()]


def split_options() -> dict[str, Any]:
    """Typer options shared by every command that needs train/validation/test splits; their defaults are
    :class:`~speechprune.data.splits.SplitOptions`'s."""
    d = SplitOptions()
    return dict(
        split_column=typer.Option(d.split_column, help="Column holding train/validation/test (e.g. FSDD's 'split')."),
        test_groups=typer.Option(list(d.test_groups), "--test-groups", help="Hold these groups out for test (e.g. 14,15,16)."),
        val_groups=typer.Option(list(d.val_groups), "--val-groups", help="Hold these groups out for validation."),
        test_fraction=typer.Option(d.test_fraction, help="Stratified test share when neither a split column nor test groups."),
        val_fraction=typer.Option(d.val_fraction, help="Stratified validation share of the training pool (if not given)."),
    )


def split_flags(split_column: str | None, test_groups: List[str], val_groups: List[str], test_fraction: float,
                val_fraction: float) -> SplitOptions:
    """The split flags as :class:`~speechprune.data.splits.SplitOptions` (the API decides what they mean: with no
    split column and no groups, a fine-tuned model's recorded split comes first)."""
    return SplitOptions(split_column=split_column, test_groups=split_list(test_groups),
                        val_groups=split_list(val_groups), test_fraction=test_fraction, val_fraction=val_fraction)


def register(app: typer.Typer) -> None:
    so = split_options()

    @app.command("finetune")
    def finetune_cmd(
        model: str = typer.Argument(..., help="Local folder, hub id, or built-in 'tiny:<family>'."),
        data: str = typer.Argument(..., help=DATA_HELP),
        audio_column: Optional[str] = typer.Option(None, help=AUDIO_COLUMN_HELP),
        label: str = typer.Option(..., "--label", "-l", help="Label column to classify."),
        out: Path = typer.Option(..., "--out", "-o", help="Output model folder (written when training ends) (transformers: output_dir)."),
        group: Optional[str] = typer.Option(None, help="Group column (e.g. speaker) for --test-groups/--val-groups."),
        split_column: Optional[str] = so["split_column"],
        test_groups: List[str] = so["test_groups"],
        val_groups: List[str] = so["val_groups"],
        test_fraction: float = so["test_fraction"],
        val_fraction: float = so["val_fraction"],
        epochs: int = typer.Option(5, min=1, help="Training epochs (transformers: num_train_epochs)."),
        batch_size: int = typer.Option(8, min=1, help="Clips per batch (per process) (transformers: per_device_train_batch_size)."),
        grad_accum: int = typer.Option(1, min=1, help="Gradient accumulation steps (transformers: gradient_accumulation_steps)."),
        lr: float = typer.Option(5e-5, help="Learning rate of the encoder (transformers: learning_rate)."),
        head_lr: Optional[float] = typer.Option(None, help="Learning rate of the head (default: --lr)."),
        weight_decay: float = typer.Option(0.0, help="AdamW weight decay (transformers: weight_decay)."),
        schedule: str = typer.Option("linear", help="linear | cosine | constant | constant_with_warmup (transformers: lr_scheduler_type)."),
        warmup_ratio: float = typer.Option(0.1, help="Share of the steps used for warm-up (transformers: warmup_ratio)."),
        freeze_front_end: bool = typer.Option(True, help="Keep the CNN / Whisper convolutions fixed."),
        freeze_encoder: bool = typer.Option(False, help="Train the head only."),
        patience: Optional[int] = typer.Option(None, min=1, help="Stop after this many epochs without a better validation accuracy (transformers: early_stopping_patience)."),
        seed: int = typer.Option(0, help="Seed for the head, data order, splits and dropout (transformers: seed)."),
        mixed_precision: str = typer.Option("fp32", help="Training precision: fp32 | bf16 | fp16, autocast; bf16 needs a GPU or a CPU with native bf16 (transformers: bf16 / fp16)."),
        max_seconds: Optional[float] = typer.Option(None, help="Cut clips to their first N seconds."),
        window: Optional[float] = typer.Option(None, help="Whisper only: shorter encoder window in seconds (saved with the model)."),
        keep: Optional[int] = typer.Option(None, min=1, help="Keep only the first N layers before fine-tuning."),
        resume: bool = typer.Option(False, help="Continue an interrupted run from its last finished epoch (transformers: resume_from_checkpoint)."),
        report_to: str = typer.Option("none", help=REPORT_TO_HELP),
        overwrite: bool = typer.Option(False, help="Replace an existing output folder and any interrupted run."),
        device: str = typer.Option("auto", help=DEVICE_HELP + " (with accelerate launch, set by the launcher)."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
        config: Optional[str] = config_option(),
    ) -> None:
        """Fine-tune MODEL for the label column with the standard head (projector 256, mean pooling over valid
        frames, linear classifier). The result loads with plain
        `AutoModelForAudioClassification.from_pretrained(OUT)`; OUT also holds training.json and metrics.json.

        Multi-GPU: `accelerate launch -m speechprune.cli.app finetune ...` runs the same command data-parallel.

            speechprune finetune models/whisper-base ../shared/data/emodb -l emotion --group speaker --test-groups 14,15,16 --window 2 -o runs/emodb
        """
        from speechprune import api
        from speechprune.train.loop import TrainConfig

        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, lr=lr, head_lr=head_lr,
                          weight_decay=weight_decay, schedule=schedule, warmup_ratio=warmup_ratio,
                          freeze_front_end=freeze_front_end, freeze_encoder=freeze_encoder, patience=patience,
                          seed=seed, mixed_precision=mixed_precision, max_seconds=max_seconds, device=device,
                          report_to=report_to)
        split = split_flags(split_column, test_groups, val_groups, test_fraction, val_fraction)
        res = api.finetune(model, data, label, out, cfg, split, group=group, window=window, keep=keep, resume=resume,
                           overwrite=overwrite, progress=progress, audio_column=audio_column)
        if "model_dir" not in res:
            return  # a non-main process of a multi-process run, or an interrupted run
        t = res["training"]
        console.print(f"best validation accuracy {t['best_validation_accuracy']:.4f} (epoch {t['best_epoch']}), "
                      f"training {t['train_seconds']:.1f} s")
        if "test" in res:
            console.print(f"test accuracy {res['test']['accuracy']:.4f}, macro-F1 {res['test']['macro_f1']:.4f}")
        console.print(f"[green]model[/green] → {out}")
        typer.echo(json.dumps({"model_dir": str(out), "test_accuracy": res.get("test", {}).get("accuracy")}))
