"""``speechprune profile``: parameters, MACs, FlopCounter cross-check, latency and memory of one model.

Heavy imports (torch, transformers) happen inside the command so that ``speechprune --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
import typer

HELP = "\n\n".join(
    [
        "Profile a speech model: parameters and analytic MACs per part, an optional FlopCounter cross-check, "
        "latency (median/p90/min/mean) and peak memory.",
        "MODEL is a local folder or hub id (loaded with transformers.AutoModel; for Whisper only the encoder is "
        "kept), or one of tiny:NAME / default:NAME with NAME in wav2vec2, hubert, wavlm, data2vec-audio, whisper, "
        "which builds a randomly initialised model from a small test config or the default config (no download).",
        "MAC convention: 1 MAC = one multiply-add = 2 FLOPs = torch FlopCounterMode FLOPs / 2. Counted: Linear, "
        "Conv1d and the attention matmuls QK^T and AV; not counted: bias adds, norms, activations, softmax, pooling, "
        "WavLM's relative-position bucket lookup (its gru_rel_pos_linear is a Linear and is counted). MACs are per "
        "clip.",
        "Whisper always processes its fixed input window (30 s for real checkpoints: 3000 mel frames -> 1500 "
        "positions), so its cost does not depend on --seconds; a clip longer than the window costs one window per "
        "started window.",
    ]
)


def profile_cmd(
    model: str = typer.Argument(..., help="Local folder, hub id, or tiny:NAME / default:NAME."),
    seconds: float = typer.Option(1.0, "--seconds", help="Clip length in seconds (16 kHz)."),
    batch_size: int = typer.Option(1, "--batch-size", help="Clips per batch for the latency measurement."),
    repeats: int = typer.Option(20, "--repeats", help="Timed forward passes."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed forward passes before timing."),
    threads: int | None = typer.Option(None, "--threads", help="torch.set_num_threads for the run (default: keep)."),
    device: str = typer.Option("auto", "--device", help="Latency device: auto (CUDA when present) | cpu | cuda | "
                                                        "cuda:N. Use --device cpu to time a CPU deployment on a GPU "
                                                        "machine."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 | bf16 | fp16 — fp32 uses TF32 matmuls on CUDA; bf16 is "
                                                      "bf16 weights on CUDA, torch.autocast on a CPU."),
    flop_check: bool = typer.Option(True, "--flop-check/--no-flop-check",
                                    help="Cross-check the analytic MACs with FlopCounterMode (one extra forward)."),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Measure latency and peak memory."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the full report as JSON (atomically)."),
) -> None:
    from speechprune import api
    from speechprune.profile import render_report

    report = api.profile(model, seconds=seconds, batch_size=batch_size, repeats=repeats, warmup=warmup,
                         threads=threads, device=device, dtype=dtype, flop_check=flop_check, latency=latency,
                         json_out=json_out)
    render_report(report)
    if json_out is not None:
        typer.echo(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    """Add the ``profile`` subcommand to ``app``."""
    app.command("profile", help=HELP)(profile_cmd)
