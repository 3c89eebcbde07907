"""``speechprune extract``: cached per-layer features of a labelled dataset."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional

import typer

from speechprune.cli.common import AUDIO_COLUMN_HELP, DATA_HELP, console, load_dataset_spec, parse_states


def register(app: typer.Typer) -> None:
    @app.command("extract")
    def extract(
        model: str = typer.Argument(..., help="Local folder, hub id, or built-in 'tiny:<family>'."),
        data: str = typer.Argument(..., help=DATA_HELP),
        audio_column: Optional[str] = typer.Option(None, help=AUDIO_COLUMN_HELP),
        label: List[str] = typer.Option([], "--label", "-l", help="Label column(s) to keep with the features (repeatable)."),
        group: Optional[str] = typer.Option(None, help="Group column (e.g. speaker) for speaker-independent splits later."),
        pooling: str = typer.Option(
            "mean", help="mean (valid frames, padding-aware) | mean-all (all frames incl. padding, as the papers) | "
            "segment (one row per labelled segment; needs --segments-dir) | frames (every valid frame)."
        ),
        layers: str = typer.Option("all", help="States to keep: 'all', '0,3,6' or '2-5' (0 = input to layer 1, i = output of layer i)."),
        batch_size: int = typer.Option(8, min=1, help="Clips per forward pass."),
        dtype: str = typer.Option("fp32", help="fp32 or bf16 (autocast; ~2× faster on AMX CPUs, validate first)."),
        device: str = typer.Option("cpu", help="cpu or cuda."),
        window: Optional[float] = typer.Option(None, help="Whisper only: shorter encoder window in seconds (drift is reported)."),
        segments_dir: Optional[str] = typer.Option(None, help="Folder of .lablaut segment files (for --pooling segment)."),
        final_norm: bool = typer.Option(False, help="Apply the model's final LayerNorm to the last state (HF convention)."),
        cache_dir: Optional[Path] = typer.Option(None, help="Cache root (default $SPEECHPRUNE_CACHE or ~/.cache/speechprune)."),
        out: Optional[Path] = typer.Option(None, help="Also copy features.safetensors + meta.json to this folder."),
        to_dataset: Optional[Path] = typer.Option(
            None, help="Also write the features as a Hugging Face datasets folder (load_from_disk): one row per "
            "clip, columns key, labels, group, state_0..state_L."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Extract every requested state of MODEL for every clip of DATA in one forward pass per batch.

        Results are cached by model weights + data + options: re-running is instant, and an interrupted run
        resumes from the last finished batch. Bad audio stops the run with an error naming the file.
        """
        from speechprune.features import extract_features
        from speechprune.features.window_advice import warn_if_window_too_long
        from speechprune.models import load_encoder

        enc = load_encoder(model, window_seconds=window, device=device)
        ds = load_dataset_spec(data, label, group, segments_dir, audio_column)
        warn_if_window_too_long(enc, ds)
        feats = extract_features(
            enc, ds, pooling=pooling, layers=parse_states(layers), batch_size=batch_size, dtype=dtype,
            device=device, final_norm=final_norm, cache_dir=cache_dir, progress=progress,
        )
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for name in ("features.safetensors", "meta.json", "run.json"):
                shutil.copy2(feats.path / name, out / name)
        if to_dataset is not None:
            from speechprune.features.to_dataset import save_features_dataset

            save_features_dataset(feats, to_dataset, keys=[it.key for it in ds.items])
            console.print(f"[green]datasets folder[/green] → {to_dataset} (datasets.load_from_disk)")
        console.print(
            f"[green]features[/green]: {feats.num_rows} rows × {len(feats.layers)} states × {feats.dim} dims "
            f"({pooling}) → {feats.path}"
        )
        typer.echo(str(feats.path))
