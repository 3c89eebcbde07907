"""``speechprune extract``: cached per-layer features of a labelled dataset."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from speechprune.cli.common import AUDIO_COLUMN_HELP, DATA_HELP, console, parse_states
from speechprune.utils.device import DEVICE_HELP


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
        dtype: str = typer.Option("fp32", help="fp32 | bf16 (CUDA: bf16 weights; CPU: autocast, ~2× faster on AMX "
                                                "CPUs). fp32 on CUDA uses TF32 matmuls. Validate bf16 first."),
        device: str = typer.Option("auto", help=DEVICE_HELP),
        window: Optional[float] = typer.Option(None, help="Whisper only: shorter encoder window in seconds (drift is reported)."),
        segments_dir: Optional[str] = typer.Option(None, help="Folder of .lablaut segment files (for --pooling segment)."),
        chunk_seconds: float = typer.Option(30.0, min=0.1, help="Clips longer than this are encoded in chunks of it "
                                            "(bounded memory; mean/frames pooling only; Whisper: at most its window)."),
        final_norm: bool = typer.Option(False, help="Apply the model's final LayerNorm to the last state (HF convention)."),
        cache_dir: Optional[Path] = typer.Option(None, help="Cache root (default $SPEECHPRUNE_CACHE or ~/.cache/speechprune)."),
        bucket: Optional[bool] = typer.Option(
            None, "--bucket/--no-bucket", help="Batch clips of similar length (less padding). Default: exactly when "
            "it cannot change the features (attention-masked models, pooling other than mean-all)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also copy features.safetensors + meta.json to this folder."),
        to_dataset: Optional[Path] = typer.Option(
            None, help="Also write the features as a Hugging Face datasets folder (load_from_disk): one row per "
            "clip, columns key, labels, group, state_0..state_L."),
        overwrite: bool = typer.Option(False, help="Replace a non-empty --out / --to-dataset folder that extract "
                                       "did not write."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Extract every requested state of MODEL for every clip of DATA in one forward pass per batch.

        Results are cached by model weights + data + options: re-running is instant, and an interrupted run
        resumes from the last finished batch. Bad audio stops the run with an error naming the file.
        Several processes (`accelerate launch -m speechprune.cli.app extract ...`, one device each) share the
        batches; the cache entry is the same as one process writes.
        """
        from speechprune import api
        from speechprune.utils.distributed import is_main_process

        feats = api.extract(model, data, labels=list(label), group=group, pooling=pooling, layers=parse_states(layers),
                            batch_size=batch_size, dtype=dtype, device=device, window=window,
                            segments_dir=segments_dir, chunk_seconds=chunk_seconds, final_norm=final_norm,
                            cache_dir=cache_dir, bucket=bucket, out=out, to_dataset=to_dataset, overwrite=overwrite,
                            audio_column=audio_column, progress=progress, log=console.print)
        if not is_main_process():
            return
        console.print(
            f"[green]features[/green]: {feats.num_rows} rows × {len(feats.layers)} states × {feats.dim} dims "
            f"({pooling}) → {feats.path}"
        )
        typer.echo(str(feats.path))
