"""One profile of a model: parameters, analytic MACs, an optional FlopCounter cross-check, latency and memory.

:func:`profile_model` returns a JSON-ready dict (the CLI writes it as is); :func:`render_report` prints it as
``rich`` tables. Everything is per clip (batch 1) unless a key says ``per_batch``.
"""

from __future__ import annotations

import platform
from typing import Any

from torch import nn

from speechprune.profile.arch import PARTS, ArchSpec
from speechprune.profile.flops import flop_counter_macs
from speechprune.profile.latency import measure_latency
from speechprune.profile.macs import MAC_CONVENTION, mac_breakdown
from speechprune.profile.params import count_params


def _versions() -> dict[str, str]:
    import torch
    import transformers

    import speechprune

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "speechprune": getattr(speechprune, "__version__", "unknown"),
    }


def profile_model(
    model: nn.Module,
    seconds: float = 1.0,
    batch_size: int = 1,
    latency: bool = True,
    flop_check: bool = False,
    warmup: int = 3,
    repeats: int = 20,
    threads: int | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    name: str | None = None,
) -> dict[str, Any]:
    """Profile ``model`` on random clips of ``seconds`` (MACs are per clip; latency is per batch of ``batch_size``).

    ``flop_check`` runs one extra forward under FlopCounterMode and reports its per-part MACs and the relative
    difference ``(analytic − counter) / counter`` of the totals (0 when the analytic model is exact).
    """
    spec = ArchSpec.from_model(model)
    num_samples = round(seconds * spec.sample_rate)
    macs = mac_breakdown(spec, num_samples)
    macs["per_batch"] = macs["total"] * batch_size
    params = count_params(model)
    notes = list(dict.fromkeys(macs["notes"] + params["notes"]))
    report: dict[str, Any] = {
        "model": {
            "name": name,
            "family": spec.family,
            "class": spec.model_class,
            "input_kind": spec.input_kind,
            "d_model": spec.d_model,
            "num_layers": spec.num_layers,
            "whisper_window_s": spec.whisper_window.seconds if spec.whisper_window else None,
        },
        "input": {
            "seconds": seconds,
            "num_samples": num_samples,
            "batch_size": batch_size,
            "frames": macs["frames"],
            "windows": macs["windows"],
        },
        "convention": MAC_CONVENTION,
        "params": params,
        "macs": macs,
        "flop_check": None,
        "latency": None,
        "spec": spec.to_dict(),
        "versions": _versions(),
        "notes": notes,
    }
    if flop_check:
        counted = flop_counter_macs(model, num_samples, batch_size=1)
        diff = macs["total"] - counted["per_clip"]
        report["flop_check"] = {
            "method": "torch.utils.flop_counter.FlopCounterMode FLOPs / 2, torch.no_grad(), eager attention",
            "total": counted["per_clip"],
            "parts": counted["parts"],
            "layers": counted["layers"],
            "by_op": counted["by_op"],
            "abs_diff": diff,
            "rel_diff": diff / counted["per_clip"] if counted["per_clip"] else None,
        }
    if latency:
        report["latency"] = measure_latency(
            model, seconds=seconds, batch_size=batch_size, warmup=warmup, repeats=repeats, threads=threads,
            device=device, dtype=dtype,
        )
    return report


def _g(x: float | None) -> str:
    return "" if x is None else f"{x / 1e9:.4f}"


def _m(x: float | None) -> str:
    return "" if x is None else f"{x / 1e6:.3f}"


def render_report(report: dict[str, Any], console: Any = None) -> None:
    """Print ``report`` (from :func:`profile_model`) as rich tables: parts, per layer, latency, notes."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    m, inp, macs, params = report["model"], report["input"], report["macs"], report["params"]
    fc = report.get("flop_check")
    title = f"{m['name'] or m['class']} ({m['family']}, {m['class']}): {inp['seconds']:g} s, {inp['frames']} frames"
    if inp["windows"]:
        title += f" (Whisper: {inp['windows']} × {m['whisper_window_s']:g} s window)"
    t = Table(title=title)
    for col in ("part", "params (M)", "GMACs / clip", "% MACs", "GMACs / s audio"):
        t.add_column(col, justify="left" if col == "part" else "right")
    if fc:
        t.add_column("FlopCounter GMACs", justify="right")
    total = macs["total"] or 1
    for part in PARTS:
        p, mc = params["parts"][part], macs["parts"][part]
        if not p and not mc and not (fc and fc["parts"][part]):
            continue
        row = [part, _m(p), _g(mc), f"{100 * mc / total:.1f}", _g(mc / inp["seconds"])]
        t.add_row(*row, *([_g(fc["parts"][part])] if fc else []))
    row = ["total", _m(params["total"]), _g(macs["total"]), "100.0", _g(macs["per_second"])]
    t.add_row(*row, *([_g(fc["total"])] if fc else []), style="bold")
    console.print(t)

    lt = Table(title="transformer layers (per clip; layer i = encoder.layers[i-1], its output is state i)")
    for col in ("layer", "heads", "head dim", "FFN", "attention GMACs", "FFN GMACs", "params (M)"):
        lt.add_column(col, justify="right")
    spec_layers = report["spec"]["layers"]
    for row, sl, np_ in zip(macs["layers"], spec_layers, params["layers"]):
        att, ffn = sl["attention"], sl["ffn"]
        lt.add_row(str(row["index"] + 1), str(att["num_heads"]) if att else "-", str(att["head_dim"]) if att else "-",
                   str(ffn["d_ff"]) if ffn else "-", _g(row["attention"]), _g(row["ffn"]), _m(np_))
    console.print(lt)

    if fc and fc["rel_diff"] is not None:
        console.print(f"analytic vs FlopCounter: {_g(macs['total'])} vs {_g(fc['total'])} GMACs per clip, "
                      f"relative difference {fc['rel_diff']:+.2e}")
    lat = report.get("latency")
    if lat:
        s = lat["settings"]
        ltab = Table(title=f"latency: batch {s['batch_size']} × {s['seconds']:g} s, {s['device']}, {s['dtype']}, "
                           f"{s['threads']} threads, {s['repeats']} repeats (torch {s['torch_version']})")
        for col in ("", "median", "p90", "min", "mean"):
            ltab.add_column(col, justify="right")
        for key, label in (("ms_per_batch", "ms / batch"), ("ms_per_audio_second", "ms / s audio")):
            ltab.add_row(label, *(f"{lat[key][k]:.2f}" for k in ("median", "p90", "min", "mean")))
        console.print(ltab)
        mem = lat["memory"]
        console.print(f"real-time factor {lat['real_time_factor']:.4f}; peak memory "
                      f"{mem['peak_bytes'] / 2**20:.1f} MiB above baseline ({mem['method']})")
    console.print(f"[dim]{report['convention']}[/dim]")
    for note in report["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
