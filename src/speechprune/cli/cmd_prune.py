"""``speechprune prune layers``: truncate by convexity or by hand, or remove layers without retraining."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from speechprune.cli.cmd_finetune import split_flags, split_list, split_options
from speechprune.cli.common import AUDIO_COLUMN_HELP, console
from speechprune.cli.config import config_option
from speechprune.errors import SpeechpruneError
from speechprune.utils.device import DEVICE_HELP

prune_app = typer.Typer(help="Remove parts of a model: whole layers (`layers`), or channels/heads/FFN units.",
                        no_args_is_help=True)


def _layer_list(spec: str) -> list[int]:
    try:
        return [int(x) for x in split_list([spec])]
    except ValueError as exc:
        raise SpeechpruneError(f"cannot parse layer list {spec!r}: use e.g. '3,5,7'") from exc


def register(app: typer.Typer) -> None:
    app.add_typer(prune_app, name="prune")
    so = split_options()

    @prune_app.command("layers", short_help="Prune whole transformer layers: by convexity, by hand (--keep/--drop), or remove them without retraining (--no-retrain).")
    def layers_cmd(
        model: str = typer.Argument(..., help="Local folder, hub id, or built-in 'tiny:<family>'."),
        out: Path = typer.Option(..., "--out", "-o", help="Pruned model folder, or results folder with --no-retrain."),
        by: Optional[str] = typer.Option(None, help="'convexity': keep the layers up to the depth convexity picks."),
        keep: Optional[int] = typer.Option(None, help="Keep layers 1..N."),
        drop: Optional[str] = typer.Option(None, help="Drop these layers, e.g. '3,5' (layers are numbered 1..L)."),
        no_retrain: bool = typer.Option(False, "--no-retrain", help="Remove layers one at a time from a fine-tuned classifier and evaluate each step (no training)."),
        order: List[str] = typer.Option(["backward", "forward", "block-influence", "knn-block-influence"], "--order",
                                        help="Removal orders for --no-retrain (repeatable or comma-separated)."),
        data: Optional[str] = typer.Option(None, help="Labelled data for --by convexity and --no-retrain."),
        audio_column: Optional[str] = typer.Option(None, help=AUDIO_COLUMN_HELP),
        label: Optional[str] = typer.Option(None, "--label", "-l", help="Label column."),
        group: Optional[str] = typer.Option(None, help="Group column of the data."),
        tolerance: float = typer.Option(0.0, min=0.0, help="--by convexity: take the shallowest layer within this many points of the best."),
        split_column: Optional[str] = so["split_column"],
        test_groups: List[str] = so["test_groups"],
        val_groups: List[str] = so["val_groups"],
        test_fraction: float = so["test_fraction"],
        val_fraction: float = so["val_fraction"],
        seed: int = typer.Option(0, help="Seed of a random split."),
        window: Optional[float] = typer.Option(None, help="Whisper only: shorter encoder window in seconds."),
        batch_size: int = typer.Option(8, min=1, help="Clips per forward pass."),
        profile_seconds: float = typer.Option(1.0, help="Clip length for the MACs of the removal curve."),
        influence_clips: int = typer.Option(200, min=10, help="Training clips used to measure block influence."),
        overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
        device: str = typer.Option("auto", help="Where features, influence and evaluations are computed: "
                                                + DEVICE_HELP),
        progress: bool = typer.Option(True, help="Show progress bars."),
        config: Optional[str] = config_option(),
    ) -> None:
        """Prune whole transformer layers. Exactly one of:

        --by convexity --data D --label L   keep layers 1..k, k = the layer of highest graph convexity of the
                                            pretrained model for L (with --tolerance: the shallowest within it);
        --keep N / --drop i,j               by hand;
        --no-retrain --data D --label L     from a fine-tuned classifier, remove layers one at a time in each
                                            --order and evaluate after each removal (retained-capacity curves,
                                            CSV + PNG). Layer 1 is never removed (WavLM keeps its position bias there).

        Pruned models reload with plain transformers `from_pretrained`; speechprune.json records the kept layers.
        """
        from speechprune import api

        options = api.LayerPruneOptions(by=by, keep=keep, drop=_layer_list(drop) if drop else None,
                                        no_retrain=no_retrain, orders=split_list(order), tolerance=tolerance,
                                        batch_size=batch_size, profile_seconds=profile_seconds,
                                        influence_clips=influence_clips)
        split = split_flags(split_column, test_groups, val_groups, test_fraction, val_fraction)
        res = api.prune_layers(model, out, options, split, data=data, label=label, group=group, window=window,
                               seed=seed, device=device, overwrite=overwrite, audio_column=audio_column,
                               progress=progress, log=console.print)
        if no_retrain:
            console.print(f"[green]results[/green] → {out}")
        else:
            typer.echo(json.dumps(res))
