"""``speechprune prune layers``: truncate by convexity or by hand, or remove layers without retraining."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from speechprune.cli.cmd_finetune import split_list, split_options, split_spec_for
from speechprune.cli.common import AUDIO_COLUMN_HELP, console, load_dataset_spec
from speechprune.cli.config import config_option
from speechprune.errors import SpeechpruneError
from speechprune.utils.device import DEVICE_HELP, resolve_device

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
                                            --order and evaluate after each removal on validation and on test
                                            (retained-capacity curves, CSV + PNG); how many layers can go is read
                                            from validation, test is reported only. Layer 1 is never removed (WavLM
                                            keeps its position bias there).

        Pruned models reload with plain transformers `from_pretrained`; speechprune.json records the kept layers.
        """
        chosen = [name for name, on in (("--by", by), ("--keep", keep is not None), ("--drop", drop),
                                        ("--no-retrain", no_retrain)) if on]
        if len(chosen) != 1:
            raise SpeechpruneError("give exactly one of --by convexity, --keep, --drop, --no-retrain"
                                   + (f" (got {', '.join(chosen)})" if chosen else ""))
        if by is not None and by != "convexity":
            raise SpeechpruneError(f"--by supports 'convexity' only, got {by!r}")
        from speechprune.utils.outputs import claim_output

        claim_output(out, overwrite=overwrite, command="prune layers")  # usable, unused (or --overwrite), locked
        if (by or no_retrain) and not (data and label):
            raise SpeechpruneError(f"{chosen[0]} needs --data and --label")
        from speechprune.models import load_encoder

        dev = resolve_device(device)
        enc = load_encoder(model, window_seconds=window, device=dev)
        if no_retrain:
            spec = split_spec_for(model, split_column, test_groups, val_groups, test_fraction, val_fraction, seed)
            _removal(enc, data, label, group, spec, split_list(order), out, batch_size, profile_seconds,
                     influence_clips, progress, audio_column)
            return
        meta: dict[str, Any] = {}
        if keep is not None:
            pruned = enc.keep_layers(keep)
        elif drop:
            pruned = enc.drop_layers(_layer_list(drop))
        else:
            pruned, meta = _by_convexity(enc, data, label, group, tolerance, batch_size, progress, audio_column)
        pruned.model.to("cpu")
        pruned.save_pretrained(out, metadata={"layer_pruning": meta or {"keep": keep, "drop": drop}})
        console.print(f"kept layers {pruned.kept_layers} of {enc.num_layers} → {out}")
        typer.echo(json.dumps({"model_dir": str(out), "kept_layers": pruned.kept_layers, **meta}))


def _by_convexity(enc: Any, data: str, label: str, group: Any, tolerance: float, batch_size: int,
                  progress: bool, audio_column: str | None = None) -> tuple[Any, dict[str, Any]]:
    from speechprune.analysis.convexity import convexity_by_layer
    from speechprune.compress.layers import choose_depth
    from speechprune.features.extract import extract_features

    ds = load_dataset_spec(data, [label], group, audio_column=audio_column)
    from speechprune.utils.device import model_device

    feats = extract_features(enc, ds, pooling="mean", batch_size=batch_size, device=str(model_device(enc.model)),
                             progress=progress)
    rows = convexity_by_layer(feats, label)
    choice = choose_depth({r["state"]: r["score"] for r in rows}, tolerance)
    console.print("convexity by state: " + ", ".join(f"{r['state']}: {r['score']:.1f}" for r in rows))
    console.print(f"best layer {choice.best_layer} ({choice.best_score:.1f} %); keeping {choice.depth} layer(s)")
    return enc.keep_layers(choice.depth), {"by": "convexity", "label": label, **choice.to_dict()}


def _removal(enc: Any, data: str, label: str, group: Any, spec: Any, orders: list[str], out: Path, batch_size: int,
             profile_seconds: float, influence_clips: int, progress: bool, audio_column: str | None = None) -> None:
    from speechprune.compress.layers import check_removal_inputs, removal_lines, remove_without_retraining

    check_removal_inputs(enc, orders)
    columns = [label] + ([spec.split_column] if spec.split_column else [])
    ds = load_dataset_spec(data, columns, group or spec.group_column, audio_column=audio_column)
    summary = remove_without_retraining(enc, ds, label, spec, orders, out, batch_size=batch_size,
                                        profile_seconds=profile_seconds, influence_clips=influence_clips,
                                        progress=progress)
    for line in removal_lines(summary, enc.num_layers):
        console.print(line)
    console.print(f"[green]results[/green] → {out}")
