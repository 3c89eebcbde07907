"""The run report: one table of candidates with the evidence behind every number (95 % intervals, test n, the
paired comparison with the unpruned model), confusion matrices and per-class F1, a Pareto plot, the analysis
figures — each with a short "how to read this" — as self-contained HTML and as Markdown with the same content.

The recommended model is chosen on the **validation** split only: the one with the fewest MACs among the
candidates that keep at least ``recommend_min_retained`` of the unpruned model's validation accuracy (default
99 %); if none does, the most accurate one on validation. Test numbers are only reported. No model is recommended
when the unpruned model is not above chance with confidence (the chance guard of the ``evaluate`` stage).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

from speechprune.compress.base import BASELINE, Candidate, methods
from speechprune.utils.io import write_text_atomic

COLUMNS = [("name", "candidate"), ("kind", "what"), ("format", "format"), ("num_layers", "layers"),
           ("params_m", "params (M)"), ("size_mb", "size (MB)"), ("gmacs_per_s", "GMACs / s audio"), ("latency_ms", "latency ms (spread)"),
           ("val_accuracy", "val. accuracy (chooses)"), ("accuracy", "test accuracy [95 % CI]"), ("n_test", "test n"),
           ("macro_f1", "test macro-F1"), ("retained", "retained [95 % CI]"), ("verdict", "vs. unpruned"),
           ("train_seconds", "train (s)")]
NAN = float("nan")


#: Deployable variants of a candidate (``speechprune run``'s export stage), in table order.
VARIANTS = (("fp32", "ONNX fp32"), ("int8", "ONNX int8"))


def candidate_rows(candidates: list[Candidate], costs: dict[str, Any], min_retained: float,
                   evidence: dict[str, Any] | None = None, checks: dict[str, Any] | None = None,
                   exports: dict[str, Any] | None = None) -> list[dict]:
    """One row per candidate; the ``recommended`` flag is set from validation numbers only (module doc)."""
    evidence = evidence or {}
    ev = evidence.get("candidates", {})
    base = next((c for c in candidates if c.method == BASELINE), candidates[0])
    base_val = (ev.get(base.name, {}).get("validation") or {}).get("accuracy")
    rows = []
    for c in candidates:
        cost = costs.get(c.name, {})
        e = ev.get(c.name, {})
        test, val = e.get("test") or {}, e.get("validation") or {}
        interval, paired = test.get("interval") or {}, test.get("paired") or {}
        acc = test.get("accuracy", c.metrics.get("accuracy", NAN))
        base_acc = (ev.get(base.name, {}).get("test") or {}).get("accuracy", base.metrics.get("accuracy", NAN))
        is_base = c.name == base.name
        rows.append({
            "name": c.name, "kind": c.kind, "method": c.method, "num_layers": c.provenance.get("num_layers"),
            "params_m": cost.get("params_total", NAN) / 1e6,
            "gmacs_per_s": cost.get("macs_per_second", NAN) / 1e9,
            "latency_ms": cost.get("latency_ms_median") or NAN, "latency_spread": cost.get("latency_spread"),
            "latency_flagged": bool(cost.get("latency_flagged")),
            "latency_check": (checks or {}).get(c.name, {}).get("contradiction"),
            "val_accuracy": val.get("accuracy", NAN), "n_validation": val.get("n"),
            "accuracy": acc, "accuracy_low": interval.get("low", NAN), "accuracy_high": interval.get("high", NAN),
            "interval_method": interval.get("method"), "n_test": test.get("n"),
            "macro_f1": test.get("macro_f1", c.metrics.get("macro_f1", NAN)),
            "retained": acc / base_acc if base_acc else NAN,
            "retained_low": 1.0 if is_base else paired.get("retained_low", NAN),
            "retained_high": 1.0 if is_base else paired.get("retained_high", NAN),
            "difference_low": paired.get("difference_low"), "difference_high": paired.get("difference_high"),
            "verdict": "reference" if is_base else paired.get("verdict", "–"),
            "val_retained": val.get("accuracy", NAN) / base_val if base_val else NAN,
            "train_seconds": c.provenance.get("train_seconds", 0.0), "model_dir": c.model_dir,
            "predictions": e.get("predictions"), "recommended": False,
            "format": "torch", "size_mb": _disk_size(c.model_dir) / 1e6,
        })
        rows += _variant_rows(rows[-1], (exports or {}).get(c.name) or {}, base_acc)
    guard = evidence.get("chance_guard")
    if guard is not None and not guard.get("above_chance", True):
        return rows  # the chance guard: nothing is recommended (the report says why)
    key = "val_retained" if any(r["val_retained"] == r["val_retained"] for r in rows) else "retained"
    acc_key = "val_accuracy" if key == "val_retained" else "accuracy"
    ok = [r for r in rows if r[key] >= min_retained]
    fastest = lambda r: r["latency_ms"] if r["latency_ms"] == r["latency_ms"] else float("inf")  # noqa: E731
    pick = (min(ok, key=lambda r: (r["gmacs_per_s"], fastest(r), -r[acc_key])) if ok
            else max(rows, key=lambda r: r[acc_key]))
    pick["recommended"] = True
    return rows


def _variant_rows(row: dict[str, Any], exp: dict[str, Any], base_acc: float) -> list[dict[str, Any]]:
    """The ONNX fp32 / int8 rows of a candidate: accuracy on the same test clips, size on disk, latency (measured
    interleaved with torch). A variant inherits its torch model's validation numbers (and so may be recommended,
    the fastest among equal MACs) only where it agrees with torch on at least 99 % of the test clips."""
    variants = (exp.get("verification") or {}).get("variants", {})
    latency = (exp.get("latency") or {}).get("ms_median", {})
    out = []
    for v, label in VARIANTS:
        if v not in variants:
            continue
        x = variants[v]
        ci = x.get("accuracy_ci95") or [NAN, NAN]
        agrees = (x.get("top1_agreement") or 0.0) >= 0.99
        out.append({**row, "name": f"{row['name']} · {v}", "format": label, "size_mb": exp["size_bytes"][v] / 1e6,
                    "latency_ms": latency.get(v, NAN), "latency_spread": None, "latency_flagged": False,
                    "latency_check": None, "accuracy": x["accuracy"], "accuracy_low": ci[0], "accuracy_high": ci[1],
                    "interval_method": "wilson", "macro_f1": NAN,
                    "retained": x["accuracy"] / base_acc if base_acc else NAN, "retained_low": NAN,
                    "retained_high": NAN, "verdict": f"top-1 = torch on {100 * x['top1_agreement']:.1f} %",
                    "val_accuracy": row["val_accuracy"] if agrees else NAN,
                    "val_retained": row["val_retained"] if agrees else NAN,
                    "top1_agreement": x.get("top1_agreement"), "train_seconds": 0.0, "predictions": None,
                    "model_dir": str(Path(exp["folder"]) / exp["files"][v])})
    return out


def _disk_size(model_dir: str) -> float:
    return float(sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))) or NAN


def confusion_plot(evidence: dict[str, Any], names: list[str], path: Path) -> Path | None:
    """One test-split confusion matrix per candidate (rows = true class, columns = predicted; counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from speechprune.analysis.plots import _save

    mats = [(n, evidence["candidates"][n]["test"]["confusion_matrix"]) for n in names
            if (evidence.get("candidates", {}).get(n) or {}).get("test")]
    if not mats:
        return None
    cols = min(3, len(mats))
    nrows = (len(mats) + cols - 1) // cols
    k = len(mats[0][1]["classes"])
    side = max(3.2, min(0.32 * k + 1.8, 6.0))
    fig, axes = plt.subplots(nrows, cols, figsize=(side * cols, side * nrows), squeeze=False)
    for ax in axes.ravel()[len(mats):]:
        ax.axis("off")
    for ax, (name, cm) in zip(axes.ravel(), mats):
        m = np.asarray(cm["matrix"])
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1, m.max()))
        classes = cm["classes"]
        ticks = range(len(classes))
        ax.set_xticks(ticks, classes, rotation=90, fontsize=6)
        ax.set_yticks(ticks, classes, fontsize=6)
        if len(classes) <= 16:
            for i in range(len(classes)):
                for j in range(len(classes)):
                    if m[i, j]:
                        ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=6,
                                color="white" if m[i, j] > m.max() / 2 else "black")
        acc = np.trace(m) / max(1, m.sum())
        ax.set_title(f"{name}\naccuracy {acc:.3f}, n = {m.sum()}", fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    fig.suptitle("confusion matrices on the test split (counts)")
    fig.tight_layout()
    return _save(fig, path, 110)


def pareto_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speechprune.analysis.plots import _save

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in ((axes[0], "gmacs_per_s", "GMACs per second of audio"),
                            (axes[1], "latency_ms", "latency per 1 s clip (ms)")):
        for r in rows:
            marker = "*" if r["recommended"] else {"ONNX fp32": "s", "ONNX int8": "^"}.get(r.get("format"), "o")
            if r.get("accuracy_low") == r.get("accuracy_low") and r.get("accuracy_low") is not None:
                ax.errorbar(r[key], 100 * r["accuracy"], yerr=[[100 * (r["accuracy"] - r["accuracy_low"])],
                                                               [100 * (r["accuracy_high"] - r["accuracy"])]],
                            color="grey", lw=0.8, capsize=2, zorder=1)
            ax.scatter(r[key], 100 * r["accuracy"], s=160 if r["recommended"] else 50, marker=marker, zorder=2)
            ax.annotate(r["name"], (r[key], 100 * r["accuracy"]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        front = _front(rows, key)
        ax.plot([r[key] for r in front], [100 * r["accuracy"] for r in front], color="grey", lw=0.8, ls="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("test accuracy against cost (bars: 95 % CI; ★ = recommended on validation; □ ONNX fp32, △ ONNX "
                 "int8; dashed: Pareto front)")
    fig.tight_layout()
    return _save(fig, path, 120)


def _front(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    pts = sorted((r for r in rows if r[key] == r[key]), key=lambda r: (r[key], -r["accuracy"]))
    front, best = [], -1.0
    for r in pts:
        if r["accuracy"] > best:
            front.append(r)
            best = r["accuracy"]
    return front


HOW_TO_READ = {
    "similarity": "Each cell compares two states (0 = input to layer 1, i = output of layer i); bright = similar. "
                  "Red squares outline blocks of mutually similar layers only when the permutation test finds them "
                  "significant; otherwise the panel title gives the p-value and nothing is outlined.",
    "layers": "Per state: graph convexity (top) and linear-probe accuracy (bottom) for each label, computed on the "
              "training + validation clips, with dashed chance levels. The truncation depth is read from the "
              "convexity curve; a rise only counts where it clears the chance line.",
    "removal": "Retained capacity (accuracy ÷ unpruned accuracy) as layers are removed without retraining, one "
               "line per order. Left: validation, where the removal depth is chosen (first row below the dashed "
               "95 % line stops it). Right: test, reported only. Orders are offset slightly so that identical "
               "curves stay visible; a note under the plot names curves that coincide.",
    "confusion": "Test-split counts per candidate: rows are the true class, columns the prediction; the diagonal "
                 "is correct. Off-diagonal mass shows which classes a compression confuses.",
    "pareto": "Test accuracy (with its 95 % interval) against compute and latency. Up and left is better; the "
              "dashed line joins candidates that no other beats on both. Latency is timed interleaved on 1 thread; "
              "compare ratios within this run, not absolute values across machines.",
}


def build_report(run: Any, candidates: list[Candidate]) -> dict[str, Any]:
    """Write ``report.html``, ``report.md``, ``candidates.csv``, ``pareto.png`` and ``confusion.png`` into the run
    folder."""
    out = run.out
    prof = run.results.get("profile") or {}
    costs = prof.get("costs", {})
    evidence = run.results.get("evaluate") or {}
    exports = (run.results.get("export") or {}).get("exports", {})
    rows = candidate_rows(candidates, costs, run.cfg.recommend_min_retained, evidence, prof.get("latency_checks"),
                          exports)
    pareto_plot(rows, out / "pareto.png")
    confusion_plot(evidence, [r["name"] for r in rows if r["format"] == "torch"], out / "confusion.png")
    with open(out / "candidates.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    figures = _figures(run)
    from speechprune.utils.provenance import provenance

    data = {"config": run.cfg.to_dict(), "candidates": rows, "figures": [str(p) for _, p, _ in figures],
            "hardware": prof.get("hardware", {}), "latency": _latency_brief(prof),
            "evidence": {k: v for k, v in evidence.items() if k != "candidates"},
            "per_class_f1": {n: ((evidence.get("candidates", {}).get(n) or {}).get("test") or {}).get("per_class_f1")
                             for n in (r["name"] for r in rows)},
            "versions": _versions(), "provenance": provenance(), "truncate": _brief(run.results.get("truncate")),
            "blocks": _blocks_note(run), "analysis_summary": (run.results.get("analysis") or {}).get("summary", {})}
    data["warnings"] = _warnings(data)
    write_text_atomic(out / "report.md", _markdown(data, figures, out))
    write_text_atomic(out / "report.html", _html(data, figures))
    return data


def _latency_brief(prof: dict[str, Any]) -> dict[str, Any] | None:
    lat = prof.get("latency")
    if not lat:
        return None
    return {"flagged": lat["flagged"], "reasons": lat["reasons"], "remeasured": lat.get("remeasured"),
            "settings": lat["settings"], "checks": prof.get("latency_checks", {})}


def _blocks_note(run: Any) -> list[str]:
    """One sentence per similarity measure: significant blocks, or none with the p-value."""
    import json

    path = run.out / "analysis" / "blocks.json"
    if not path.exists():
        return []
    notes = []
    for name, b in json.loads(path.read_text()).items():
        if name == "provenance" or not isinstance(b, dict):
            continue
        if b.get("has_blocks"):
            ranges = ", ".join(f"{x}–{y}" if x != y else str(x) for x, y in b["blocks"])
            notes.append(f"{name}: {len(b['blocks'])} significant blocks (states {ranges}; p = {b['p_value']:.2g})")
        else:
            notes.append(f"{name}: no block structure beyond distance decay (p = {b['p_value']:.2g} ≥ α = "
                         f"{b['alpha']:g}); no outline drawn")
    return notes


def _warnings(data: dict[str, Any]) -> list[str]:
    out = []
    guard = (data["evidence"] or {}).get("chance_guard") or {}
    if guard and not guard.get("above_chance", True):
        out.append("NO RECOMMENDATION — " + guard.get("message", "the unpruned model is not above chance"))
    val = (data["evidence"] or {}).get("validation") or {}
    if val.get("note"):
        out.append(val["note"])
    lat = data.get("latency") or {}
    if lat.get("flagged"):
        out.append("Latency measurement disturbed" + (" (re-measured once, still disturbed)" if lat.get("remeasured")
                                                      else "") + ": " + "; ".join(lat["reasons"])
                   + ". Treat latency ratios as rough.")
    for name, chk in (lat.get("checks") or {}).items():
        if chk.get("contradiction"):
            out.append(f"Latency contradicts MACs for {name}: {chk['contradiction']}.")
    return out


def _brief(res: Any) -> Any:
    if not res:
        return None
    return {k: v for k, v in res.items() if k != "candidates"}


def _figures(run: Any) -> list[tuple[str, Path, str]]:
    out = run.out
    how = {"removal/removal.png": HOW_TO_READ["removal"]}  # figures of compression plug-ins
    items = [("Layer-to-layer similarity", out / "analysis" / "similarity.png", HOW_TO_READ["similarity"]),
             ("Convexity and probe accuracy per state, with chance levels", out / "analysis" / "layers.png",
              HOW_TO_READ["layers"]),
             *((title, out / path, how.get(path, "")) for m in methods() for title, path in m.figures),
             ("Confusion matrices per candidate (test)", out / "confusion.png", HOW_TO_READ["confusion"]),
             ("Accuracy against MACs and latency", out / "pareto.png", HOW_TO_READ["pareto"])]
    return [(t, p, h) for t, p, h in items if p.exists()]


def _versions() -> dict[str, str]:
    from speechprune.profile.report import _versions as v

    return v()


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _interval(r: dict[str, Any], key: str) -> str:
    """`` [low, high]`` of ``key``'s interval (``<key>_low``/``<key>_high``), or nothing where there is none."""
    return "" if _nan(r.get(f"{key}_low")) else f" [{r[f'{key}_low']:.2f}, {r[f'{key}_high']:.2f}]"


def _cell(r: dict[str, Any], key: str) -> str:
    """A table cell with its uncertainty: intervals beside accuracies and retained, spread and flags on latency."""
    v = r.get(key)
    if key == "verdict":
        return str(v or "–")
    if key not in ("accuracy", "retained", "val_accuracy", "latency_ms"):
        return _fmt(v, key)
    if _nan(v):
        return "–"
    if key == "retained" and r.get("verdict") == "reference":
        return "1 (reference)"
    if key in ("accuracy", "retained"):
        return f"{v:.3f}{_interval(r, key)}"
    if key == "val_accuracy":
        return f"{v:.3f} (n = {r['n_validation']})" if r.get("n_validation") is not None else f"{v:.3f}"
    spread = "" if r.get("latency_spread") is None else f" (±{50 * r['latency_spread']:.0f} %)"
    flag = " ⚠" if (r.get("latency_flagged") or r.get("latency_check")) else ""
    return f"{v:.2f}{spread}{flag}"


def _fmt(v: Any, key: str) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        if key in ("accuracy", "macro_f1", "retained", "val_accuracy"):
            return f"{v:.3f}"
        if key == "train_seconds":
            return f"{v:.0f}"
        return f"{v:.3g}" if key in ("gmacs_per_s", "params_m") else f"{v:.2f}"
    return "–" if v is None else str(v)


def _recommendation_text(data: dict[str, Any]) -> str:
    rec = next((r for r in data["candidates"] if r["recommended"]), None)
    if rec is None:
        return "**No model is recommended** (see the warning above)."
    ci = "" if _nan(rec.get("accuracy_low")) else f", 95 % CI {rec['accuracy_low']:.3f}–{rec['accuracy_high']:.3f}"
    claim = ""
    if rec.get("verdict") == "no loss":
        claim = " — no loss: the paired interval of (candidate − unpruned) stays above the tolerated margin"
    elif rec.get("verdict") == "inconclusive":
        claim = (f" — whether it loses accuracy is inconclusive on {rec['n_test']} test clips (paired difference "
                 f"{rec['difference_low']:+.3f} to {rec['difference_high']:+.3f})")
    elif rec.get("verdict") == "loss":
        claim = " — it loses accuracy on test (paired interval below 0)"
    return (f"**Recommended** (chosen on validation): `{rec['name']}` — {rec['kind']}: test accuracy "
            f"{rec['accuracy']:.3f} (n = {rec['n_test']}{ci}), {100 * rec['retained']:.1f} % of the unpruned "
            f"model{claim}; {rec.get('format', 'torch')}, {_fmt(rec.get('size_mb', NAN), 'size_mb')} MB, "
            f"{rec['gmacs_per_s']:.2f} GMACs/s, {_cell(rec, 'latency_ms')} ms per 1 s clip.")


def _env(data: dict[str, Any]) -> str:
    hw = data.get("hardware", {})
    lat = data.get("latency") or {}
    s = lat.get("settings") or {}
    prov = data.get("provenance") or {}
    load = hw.get("load_avg")
    load_s = f"{load:.2f}" if isinstance(load, (int, float)) else str(load)
    parts = [f"CPU: {hw.get('cpu')}, {hw.get('cores')} cores; load average {load_s}"]
    if s:
        parts.append(f"latency: {s.get('rounds')} interleaved rounds × {s.get('repeats')} on {s.get('threads')} "
                     f"thread(s), CPU share {s.get('cpu_share')}, load {s.get('load_before', [None])[0]} → "
                     f"{s.get('load_after', [None])[0]}")
    parts.append("versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()))
    parts.append(f"git commit: {prov.get('git_commit') or 'unknown'}; seed {data['config'].get('seed')}")
    return "; ".join(parts) + "."


def _per_class_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = [r["name"] for r in data["candidates"]]
    f1 = data.get("per_class_f1") or {}
    classes = sorted({c for n in names for c in (f1.get(n) or {})})
    return names, [[c, *[("–" if (f1.get(n) or {}).get(c) is None else f"{f1[n][c]:.2f}") for n in names]]
                   for c in classes]


def _markdown(data: dict[str, Any], figures: list[tuple[str, Path, str]], out: Path) -> str:
    c = data["config"]
    lines = [f"# speechprune report: {c['model']} on {c['data']} ({c['label']})", ""]
    for w in data["warnings"]:
        lines += [f"> **⚠ {w}**", ""]
    lines += [_recommendation_text(data), ""]
    ev = data.get("evidence") or {}
    n = ev.get("n") or {}
    if n:
        lines += [f"Clips: {n.get('train')} train, {n.get('validation')} validation (every choice), {n.get('test')} "
                  f"test (reported only). Intervals are 95 %: "
                  + (f"cluster bootstrap over {ev['grouped_by']} groups when there are ≥ 5, else Wilson"
                     if ev.get("grouped_by") else "Wilson score intervals")
                  + "; retained uses the paired bootstrap of (candidate − unpruned) on the same test clips. "
                  f"\"no loss\" is claimed only when that interval stays above −{100 * ev.get('margin', 0):.0f} % of "
                  "the unpruned accuracy.", ""]
    lines += ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in data["candidates"]:
        cells = [_cell(r, k) for k, _ in COLUMNS]
        if r["recommended"]:
            cells[0] = f"**{cells[0]}** ★"
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if data.get("truncate") and data["truncate"].get("choice"):
        ch = data["truncate"]["choice"]
        lines += [f"Convexity (training + validation clips) picks depth **{ch['depth']}** (best layer "
                  f"{ch['best_layer']}, {ch['best_score']:.1f} %, tolerance {ch['tolerance']} points).", ""]
    for note in data.get("blocks") or []:
        lines.append(f"- Blocks, {note}")
    lines.append("")
    names, pc = _per_class_rows(data)
    if pc:
        lines += ["## Per-class F1 (test)", "", "| class | " + " | ".join(names) + " |",
                  "|" + "---|" * (len(names) + 1)]
        lines += ["| " + " | ".join(row) + " |" for row in pc]
        lines.append("")
    for title, path, how in figures:
        lines += [f"## {title}", "", f"![{title}]({path.relative_to(out)})", ""]
        lines += [f"*How to read this:* {how}", ""] if how else []
    lines += ["## Environment", "", _env(data),
              "", "Per-clip predictions of every candidate: `predictions/<candidate>.csv`."]
    return "\n".join(lines) + "\n"


def _html(data: dict[str, Any], figures: list[tuple[str, Path, str]]) -> str:
    c = data["config"]
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for _, h in COLUMNS)
    body = []
    for r in data["candidates"]:
        cls = ' class="recommended"' if r["recommended"] else ""
        cells = "".join(f"<td>{esc(_cell(r, k))}{' ★' if (k == 'name' and r['recommended']) else ''}</td>"
                        for k, _ in COLUMNS)
        body.append(f"<tr{cls}>{cells}</tr>")
    warnings = "".join(f'<div class="warning">⚠ {esc(w)}</div>' for w in data["warnings"])
    md_rec = _recommendation_text(data)
    rec_html = esc(md_rec).replace("**", "")
    ev = data.get("evidence") or {}
    n = ev.get("n") or {}
    clips = (f"<p class=\"note\">Clips: {n.get('train')} train, {n.get('validation')} validation (every choice), "
             f"{n.get('test')} test (reported only). 95 % intervals; retained from the paired bootstrap of "
             f"(candidate − unpruned) on the same test clips; &ldquo;no loss&rdquo; only when that interval stays "
             f"above −{100 * ev.get('margin', 0):.0f} % of the unpruned accuracy.</p>") if n else ""
    blocks = "".join(f"<li>{esc(b)}</li>" for b in data.get("blocks") or [])
    names, pc = _per_class_rows(data)
    pc_html = ""
    if pc:
        pc_html = ('<h2>Per-class F1 (test)</h2><table id="per-class-f1"><thead><tr><th>class</th>'
                   + "".join(f"<th>{esc(x)}</th>" for x in names) + "</tr></thead><tbody>"
                   + "".join("<tr>" + "".join(f"<td>{esc(x)}</td>" for x in row) + "</tr>" for row in pc)
                   + "</tbody></table>")
    figs = []
    for title, path, how in figures:
        b64 = base64.b64encode(path.read_bytes()).decode()
        figs.append(f'<figure><figcaption>{esc(title)}</figcaption>'
                    f'<img class="plot" alt="{esc(title)}" src="data:image/png;base64,{b64}">'
                    + (f'<p class="how">How to read this: {esc(how)}</p>' if how else "") + '</figure>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>speechprune report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child, #candidates td:nth-child(2) {{ text-align: left; }}
tr.recommended {{ background: #e6f4ea; font-weight: 600; }}
figure {{ margin: 1.5em 0; }} img.plot {{ max-width: 100%; border: 1px solid #eee; }}
.note, .how {{ color: #555; font-size: 13px; }}
.warning {{ background: #fdecea; border: 2px solid #d93025; color: #a50e0e; padding: 8px 12px; margin: 8px 0;
           font-weight: 600; }}
</style></head>
<body>
<h1>speechprune report</h1>
<p>{esc(c['model'])} on {esc(c['data'])}, label <b>{esc(c['label'])}</b>.</p>
{warnings}
<p id="recommendation">{rec_html}</p>
{clips}
<table id="candidates"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
<ul class="note" id="blocks">{blocks}</ul>
{pc_html}
{''.join(figs)}
<p class="note" id="environment">{esc(_env(data))} Per-clip predictions: predictions/&lt;candidate&gt;.csv.</p>
<script>
// Render check for headless tests: every plot decoded and the table filled.
window.addEventListener('load', function () {{
  var imgs = Array.from(document.querySelectorAll('img.plot'));
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  var rows = document.querySelectorAll('#candidates tbody tr').length;
  document.body.setAttribute('data-render-check', 'plots=' + ok + '/' + imgs.length + ';rows=' + rows);
}});
</script>
</body></html>
"""
