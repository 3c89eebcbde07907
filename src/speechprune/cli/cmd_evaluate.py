"""``speechprune evaluate``: accuracy, macro-F1, confusion matrix and cost of a classifier, as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from speechprune.cli.cmd_finetune import split_flags, split_options
from speechprune.cli.common import AUDIO_COLUMN_HELP, DATA_HELP, console
from speechprune.cli.config import config_option
from speechprune.utils.device import DEVICE_HELP


def register(app: typer.Typer) -> None:
    so = split_options()

    @app.command("evaluate")
    def evaluate_cmd(
        model: str = typer.Argument(..., help="A classifier folder (e.g. from `speechprune finetune`) or hub id."),
        data: str = typer.Argument(..., help=DATA_HELP),
        label: str = typer.Option(..., "--label", "-l", help="Label column the classifier predicts."),
        audio_column: Optional[str] = typer.Option(None, help=AUDIO_COLUMN_HELP),
        split: str = typer.Option("test", help="Which part to evaluate: test | validation | train | all."),
        group: Optional[str] = typer.Option(None, help="Group column (for --test-groups)."),
        split_column: Optional[str] = so["split_column"],
        test_groups: List[str] = so["test_groups"],
        val_groups: List[str] = so["val_groups"],
        test_fraction: float = so["test_fraction"],
        val_fraction: float = so["val_fraction"],
        seed: int = typer.Option(0, help="Seed of a random split (must match the fine-tuning's)."),
        batch_size: int = typer.Option(8, min=1, help="Clips per forward pass."),
        max_seconds: Optional[float] = typer.Option(None, help="Cut clips to their first N seconds."),
        profile_seconds: float = typer.Option(1.0, help="Clip length for MACs and latency."),
        latency_repeats: int = typer.Option(20, min=0, help="Timed forward passes (0 = no latency)."),
        device: str = typer.Option("auto", help="Where the model runs (and its latency is measured): " + DEVICE_HELP),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the JSON here (default: stdout only)."),
        config: Optional[str] = config_option(),
    ) -> None:
        """Evaluate a classifier on a split of DATA. Without split options, a model fine-tuned by speechprune is
        evaluated on the split recorded in its training.json (so `evaluate` sees the same test clips); otherwise
        the options define the split, and --split all uses every clip."""
        from speechprune import api

        if split not in ("test", "validation", "train", "all"):
            raise typer.BadParameter("choose test, validation, train or all", param_hint="--split")
        options = split_flags(split_column, test_groups, val_groups, test_fraction, val_fraction)
        res = api.evaluate(model, data, label, options, part=split, group=group, seed=seed, batch_size=batch_size,
                           max_seconds=max_seconds, profile_seconds=profile_seconds,
                           latency_repeats=latency_repeats, device=device, out=out, audio_column=audio_column)
        console.print(f"accuracy {res['accuracy']:.4f}, macro-F1 {res['macro_f1']:.4f} on {res['n']} clips")
        typer.echo(json.dumps(res, default=str))
