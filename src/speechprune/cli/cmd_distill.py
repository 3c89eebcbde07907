"""``speechprune distill``: replace a fine-tuned classifier's transformer stack with small mimicking layers."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from speechprune.cli.cmd_finetune import split_flags, split_options
from speechprune.cli.common import AUDIO_COLUMN_HELP, DATA_HELP, REPORT_TO_HELP, console
from speechprune.cli.config import config_option
from speechprune.utils.device import DEVICE_HELP


def register(app: typer.Typer) -> None:
    so = split_options()

    @app.command("distill")
    def distill_cmd(
        teacher: str = typer.Argument(..., help="Fine-tuned classifier: a folder written by `finetune` (or any stock "
                                                "audio-classification model of a supported family)."),
        data: str = typer.Argument(..., help=DATA_HELP),
        audio_column: Optional[str] = typer.Option(None, help=AUDIO_COLUMN_HELP),
        label: str = typer.Option(..., "--label", "-l", help="Label column the teacher classifies."),
        mimicker: str = typer.Option("mlp", help="mlp (per-frame Linear→LayerNorm→ReLU→Linear blocks), transformer "
                                                 "(small batch-first encoder layers) or none (head on the front end)."),
        hidden: int = typer.Option(64, help="h: MLP bottleneck / transformer feed-forward width (> 0)."),
        blocks: int = typer.Option(2, help="Mimicker blocks: 1 or 2."),
        nhead: Optional[int] = typer.Option(None, help="Attention heads of a transformer mimicker (default: the "
                                                       "teacher's)."),
        intermediate: Optional[int] = typer.Option(
            None, help="With 2 blocks: also regress the first block onto the teacher's state i (1..L-1)."),
        positions: bool = typer.Option(True, help="Whisper: add the fixed sinusoidal position table to the front "
                                                  "end's output (free; no effect on other families)."),
        freeze_mimicker: bool = typer.Option(True, help="Stage 2: keep the mimicker frozen (reference) or train it "
                                                        "with the head (--no-freeze-mimicker)."),
        stage1_epochs: int = typer.Option(30, min=1, help="Stage 1 (MSE) epochs (transformers: num_train_epochs)."),
        stage2_epochs: int = typer.Option(20, min=1, help="Stage 2 (task) epochs (transformers: num_train_epochs)."),
        lr: float = typer.Option(1e-3, help="Learning rate of both stages (Adam-W, constant) (transformers: learning_rate)."),
        batch_size: int = typer.Option(32, min=1, help="Clips per training batch (transformers: per_device_train_batch_size)."),
        patience: Optional[int] = typer.Option(5, help="Early stopping patience in epochs (per stage) (transformers: early_stopping_patience)."),
        seed: int = typer.Option(0, help="Seed of the mimicker's initialisation and the data order (transformers: seed)."),
        group: Optional[str] = typer.Option(None, help="Group column (e.g. speaker) for --test-groups."),
        split_column: Optional[str] = so["split_column"],
        test_groups: List[str] = so["test_groups"],
        val_groups: List[str] = so["val_groups"],
        test_fraction: float = so["test_fraction"],
        val_fraction: float = so["val_fraction"],
        window: Optional[float] = typer.Option(None, help="Whisper only: shorter encoder window in seconds (the "
                                                          "teacher's own window is used by default)."),
        latency: bool = typer.Option(True, help="Time teacher and student back-to-back (1 thread) after training."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder of the student (transformers: output_dir)."),
        resume: bool = typer.Option(False, help="Continue an interrupted run (stage and epoch it reached) (transformers: resume_from_checkpoint)."),
        overwrite: bool = typer.Option(False, help="Replace an existing output / interrupted run."),
        cache_dir: Optional[Path] = typer.Option(None, help="Root of the teacher-target cache."),
        device: str = typer.Option("auto", help="Teacher pass and training: " + DEVICE_HELP),
        report_to: str = typer.Option("none", help=REPORT_TO_HELP),
        mixed_precision: str = typer.Option("fp32", help="Training precision: fp32 | bf16 | fp16, autocast; bf16 needs a GPU or a CPU with native bf16 (transformers: bf16 / fp16)."),
        progress: bool = typer.Option(True, help="Show progress bars."),
        config: Optional[str] = config_option(),
    ) -> None:
        """Distil a fine-tuned classifier into front end + a small mimicker + the teacher's head.

        Stage 1 trains the mimicker to reproduce what the teacher's head sees (its last state, final LayerNorm
        included for Whisper / stable-layer-norm models; plus state --intermediate from the first block) with MSE,
        from a cached teacher pass (the teacher runs once per data set). Stage 2 puts the teacher's head on the
        mimicker and trains it with cross-entropy, the mimicker frozen unless --no-freeze-mimicker. Both stages
        checkpoint every epoch; --resume continues. The splits default to the ones recorded in the teacher's
        training.json, so student and teacher are scored on the same test clips.

        OUT receives the student (Whisper transformer/none students as a stock WhisperForAudioClassification;
        others as model.safetensors + speechprune_student.json, loaded with
        speechprune.compress.distill.load_student), distill.json (config, both stages' histories, test
        metrics, params and MACs vs the teacher), metrics.json and latency.json. Example:

            speechprune distill runs/fsdd-word ../shared/data/fsdd --label word --mimicker mlp --hidden 64 --blocks 2
        """
        from speechprune import api
        from speechprune.compress.distill.train import DistillConfig
        from speechprune.train.loop import TrainConfig

        def stage(epochs: int) -> TrainConfig:
            return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, schedule="constant", warmup_ratio=0.0,
                               max_grad_norm=None, patience=patience, seed=seed, device=device,
                               mixed_precision=mixed_precision, report_to=report_to).validate()

        cfg = DistillConfig(mimicker=mimicker, hidden=hidden, blocks=blocks, nhead=nhead, intermediate=intermediate,
                            positions=positions, freeze_mimicker=freeze_mimicker, stage1=stage(stage1_epochs),
                            stage2=stage(stage2_epochs), seed=seed)
        split = split_flags(split_column, test_groups, val_groups, test_fraction, val_fraction)
        res = api.distill(teacher, data, label, out, cfg, split, group=group, window=window, latency=latency,
                          resume=resume, overwrite=overwrite, cache_dir=cache_dir, audio_column=audio_column,
                          progress=progress, log=console.print)
        cost = res["cost"]
        test = res.get("test", {})
        lat = res.get("latency")
        if lat:
            console.print(f"latency: teacher {lat['teacher']['median_ms']:.2f} ms, student "
                          f"{lat['student']['median_ms']:.2f} ms ({lat['latency_gain']:.1f}x; MACs predict "
                          f"{cost['mac_gain']:.1f}x)")
        if test:
            teacher_acc = test.get("teacher_accuracy", float("nan"))
            console.print(f"test accuracy: student {test['accuracy']:.3f}, teacher {teacher_acc:.3f}")
        console.print(f"params: {cost['params_total']:,} ({100 * cost['params_fraction']:.1f}% of the teacher; stack "
                      f"{cost['params_stack']:,} = {100 * cost['stack_params_fraction']:.2f}% of the teacher's), "
                      f"MACs/clip {cost['macs_per_clip']:,} ({cost['mac_gain']:.1f}x fewer)")
        console.print(f"[green]student[/green] ({res['saved_as']} format) → {out}")
