"""``speechprune info``: what a model is, in speechprune's terms."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from speechprune.cli.common import console


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(
        model: str = typer.Argument(
            ..., help="Local folder, hub id, or built-in 'tiny:<family>' / 'default:<family>' "
            "(families: wav2vec2, hubert, wavlm, data2vec-audio, whisper; add '-stable' for pre-norm variants)."
        ),
        window: Optional[float] = typer.Option(None, help="Whisper only: encoder window in seconds (default: the model's own, 30 s)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Show a model's family, layers, sizes, frame rate and what each state index means.

        State 0 is the input to the first transformer layer; state i is the output of layer i. A model with L
        layers has L+1 states; these indices are used in every speechprune flag, file and plot.
        """
        from speechprune.models import load_encoder

        enc = load_encoder(model, window_seconds=window)
        desc = enc.describe()
        desc["states"] = _state_meanings(enc)
        if as_json:
            typer.echo(json.dumps(desc, indent=2, default=str))
            return
        table = Table(title=f"{model}", show_header=False)
        for k, v in desc.items():
            if k != "states":
                table.add_row(k, str(v))
        console.print(table)
        states = Table(title="state index convention")
        states.add_column("state")
        states.add_column("meaning")
        for i, text in enumerate(desc["states"]):
            states.add_row(str(i), text)
        console.print(states)


def _state_meanings(enc) -> list[str]:
    out = [enc.state_zero_meaning()]
    for i in range(1, enc.num_layers + 1):
        note = ""
        if i == enc.num_layers and enc.final_norm is not None:
            note = " (raw; the model's final LayerNorm is not applied — use final_norm=True for HF's last state)"
        out.append(f"output of layer {i}{note}")
    return out
