"""``speechprune export onnx``: a model folder → ONNX fp32 (+ int8), verified on real clips and timed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from speechprune.cli.common import console

export_app = typer.Typer(help="Export a model folder to a deployment format (ONNX fp32 / int8).",
                         no_args_is_help=True)


@export_app.command("onnx")
def onnx_cmd(
    model: str = typer.Argument(..., help="Any model folder speechprune writes (finetune, prune, distill output)."),
    out: Path = typer.Argument(..., help="Output folder (written atomically): model.onnx, model.int8.onnx, "
                                         "export.json."),
    quantize: Optional[str] = typer.Option(None, "--quantize", "-q", help="int8: also write an onnxruntime dynamic "
                                                                          "int8 model (MatMul/Gemm; convs fp32)."),
    data: Optional[str] = typer.Option(None, "--data", help="Verify on these clips (audiofolder, manifest, hf:...)."),
    label: Optional[str] = typer.Option(None, "--label", "-l", help="Label column the classifier predicts."),
    split: str = typer.Option("test", help="Clips to verify on: test (the split recorded in the model folder, or "
                                           "--split-column's) | all."),
    split_column: Optional[str] = typer.Option(None, help="Column holding train/validation/test (e.g. FSDD's "
                                                          "'split') when the folder records no split."),
    max_clips: Optional[int] = typer.Option(None, min=1, help="Verify on at most this many clips (the first ones)."),
    opset: int = typer.Option(17, help="ONNX opset (14..20)."),
    threads: int = typer.Option(1, min=1, help="Threads for torch and onnxruntime in the latency measurement."),
    seconds: float = typer.Option(1.0, help="Clip length for the latency measurement (Whisper: its window)."),
    latency_repeats: int = typer.Option(20, min=0, help="Timed rounds (one call of each variant per round)."),
    overwrite: bool = typer.Option(False, help="Replace an existing OUT."),
) -> None:
    """Export MODEL to ONNX with dynamic batch (and, for the wav2vec2 family, time) axes; Whisper keeps its fixed
    window. Checks ORT against torch on random clips; with --data, also on real clips (max |logit diff|, top-1
    agreement, accuracy of each variant); times torch / ORT fp32 / ORT int8 back to back. Writes OUT/export.json.
    Needs the extra: pip install 'speechprune[onnx]'.

    speechprune export onnx runs/fsdd-word exports/fsdd-word --quantize int8 --data ../shared/data/fsdd -l word
    """
    from speechprune import api

    res = api.export_onnx(model, out, quantize=quantize, data=data, label=label, split=split,
                          split_column=split_column, max_clips=max_clips, opset=opset, threads=threads,
                          seconds=seconds, latency_repeats=latency_repeats, overwrite=overwrite)
    diff = res["check"]["max_abs_logit_diff"]
    console.print(f"wrote {out}: " + ", ".join(f"{k} {res['size_bytes'][k] / 1e6:.1f} MB (max |diff| {diff[k]:.1e})"
                                               for k in res["files"]))
    typer.echo(json.dumps(res, default=str))


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
