"""The run report: one table of candidates, a Pareto plot, the analysis figures, as self-contained HTML and as
Markdown with the same content.

The recommended model is the one with the fewest MACs among the candidates that keep at least
``recommend_min_retained`` of the unpruned model's accuracy (default 99 %); if none does, the most accurate one.
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

COLUMNS = [("name", "candidate"), ("kind", "what"), ("num_layers", "layers"), ("params_m", "params (M)"),
           ("gmacs_per_s", "GMACs / s audio"), ("latency_ms", "latency (ms)"), ("accuracy", "accuracy"),
           ("macro_f1", "macro-F1"), ("retained", "retained"), ("train_seconds", "train (s)")]


def candidate_rows(candidates: list[Candidate], costs: dict[str, Any], min_retained: float) -> list[dict]:
    base = next((c for c in candidates if c.method == BASELINE), candidates[0])
    rows = []
    for c in candidates:
        cost = costs.get(c.name, {})
        rows.append({
            "name": c.name, "kind": c.kind, "num_layers": c.provenance.get("num_layers"),
            "params_m": cost.get("params_total", float("nan")) / 1e6,
            "gmacs_per_s": cost.get("macs_per_second", float("nan")) / 1e9,
            "latency_ms": cost.get("latency_ms_median") or float("nan"),
            "accuracy": c.accuracy, "macro_f1": c.metrics.get("macro_f1", float("nan")),
            "retained": c.accuracy / base.accuracy if base.accuracy else float("nan"),
            "train_seconds": c.provenance.get("train_seconds", 0.0), "model_dir": c.model_dir, "recommended": False,
        })
    ok = [r for r in rows if r["retained"] >= min_retained]
    pick = min(ok, key=lambda r: (r["gmacs_per_s"], -r["accuracy"])) if ok else max(rows, key=lambda r: r["accuracy"])
    pick["recommended"] = True
    return rows


def pareto_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speechprune.analysis.plots import _save

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in ((axes[0], "gmacs_per_s", "GMACs per second of audio"),
                            (axes[1], "latency_ms", "latency per 1 s clip (ms)")):
        for r in rows:
            marker = "*" if r["recommended"] else "o"
            ax.scatter(r[key], 100 * r["accuracy"], s=160 if r["recommended"] else 50, marker=marker)
            ax.annotate(r["name"], (r[key], 100 * r["accuracy"]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        front = _front(rows, key)
        ax.plot([r[key] for r in front], [100 * r["accuracy"] for r in front], color="grey", lw=0.8, ls="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("accuracy against cost (★ = recommended; dashed: Pareto front)")
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


def build_report(run: Any, candidates: list[Candidate]) -> dict[str, Any]:
    """Write ``report.html``, ``report.md``, ``candidates.csv`` and ``pareto.png`` into the run folder."""
    out = run.out
    costs = (run.results.get("profile") or {}).get("costs", {})
    rows = candidate_rows(candidates, costs, run.cfg.recommend_min_retained)
    pareto_plot(rows, out / "pareto.png")
    with open(out / "candidates.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    figures = _figures(run)
    data = {"config": run.cfg.to_dict(), "candidates": rows, "figures": [str(p) for _, p in figures],
            "hardware": (run.results.get("profile") or {}).get("hardware", {}),
            "versions": _versions(), "truncate": _brief(run.results.get("truncate")),
            "analysis_summary": (run.results.get("analysis") or {}).get("summary", {})}
    write_text_atomic(out / "report.md", _markdown(data, figures, out))
    write_text_atomic(out / "report.html", _html(data, figures))
    return data


def _brief(res: Any) -> Any:
    if not res:
        return None
    return {k: v for k, v in res.items() if k != "candidates"}


def _figures(run: Any) -> list[tuple[str, Path]]:
    out = run.out
    items = [("Layer-to-layer similarity (block boundaries outlined)", out / "analysis" / "similarity.png"),
             ("Convexity and probe accuracy per state, with chance levels", out / "analysis" / "layers.png"),
             *((title, out / path) for m in methods() for title, path in m.figures),
             ("Accuracy against MACs and latency", out / "pareto.png")]
    return [(t, p) for t, p in items if p.exists()]


def _versions() -> dict[str, str]:
    from speechprune.profile.report import _versions as v

    return v()


def _fmt(v: Any, key: str) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        if key in ("accuracy", "macro_f1", "retained"):
            return f"{v:.3f}"
        if key == "train_seconds":
            return f"{v:.0f}"
        return f"{v:.3g}" if key in ("gmacs_per_s", "params_m") else f"{v:.2f}"
    return "–" if v is None else str(v)


def _markdown(data: dict[str, Any], figures: list[tuple[str, Path]], out: Path) -> str:
    c = data["config"]
    lines = [f"# speechprune report: {c['model']} on {c['data']} ({c['label']})", ""]
    rec = next(r for r in data["candidates"] if r["recommended"])
    lines += [f"**Recommended:** `{rec['name']}` — {rec['kind']}: accuracy {rec['accuracy']:.3f} "
              f"({100 * rec['retained']:.1f} % of the unpruned model), {rec['gmacs_per_s']:.2f} GMACs/s, "
              f"{_fmt(rec['latency_ms'], 'latency_ms')} ms per 1 s clip.", ""]
    lines += ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in data["candidates"]:
        cells = [_fmt(r[k], k) for k, _ in COLUMNS]
        if r["recommended"]:
            cells[0] = f"**{cells[0]}** ★"
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if data.get("truncate") and data["truncate"].get("choice"):
        ch = data["truncate"]["choice"]
        lines += [f"Convexity picks depth **{ch['depth']}** (best layer {ch['best_layer']}, "
                  f"{ch['best_score']:.1f} %, tolerance {ch['tolerance']} points).", ""]
    for title, path in figures:
        lines += [f"## {title}", "", f"![{title}]({path.relative_to(out)})", ""]
    hw = data.get("hardware", {})
    lines += ["## Environment", "", f"CPU: {hw.get('cpu')}, {hw.get('cores')} cores, {hw.get('threads')} threads, "
              f"load {hw.get('load_avg')}", "", "Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items())]
    return "\n".join(lines) + "\n"


def _html(data: dict[str, Any], figures: list[tuple[str, Path]]) -> str:
    c = data["config"]
    esc = html.escape
    rec = next(r for r in data["candidates"] if r["recommended"])
    head = "".join(f"<th>{esc(h)}</th>" for _, h in COLUMNS)
    body = []
    for r in data["candidates"]:
        cls = ' class="recommended"' if r["recommended"] else ""
        cells = "".join(f"<td>{esc(_fmt(r[k], k))}{' ★' if (k == 'name' and r['recommended']) else ''}</td>"
                        for k, _ in COLUMNS)
        body.append(f"<tr{cls}>{cells}</tr>")
    figs = []
    for title, path in figures:
        b64 = base64.b64encode(path.read_bytes()).decode()
        figs.append(f'<figure><figcaption>{esc(title)}</figcaption>'
                    f'<img class="plot" alt="{esc(title)}" src="data:image/png;base64,{b64}"></figure>')
    hw = data.get("hardware", {})
    versions = ", ".join(f"{esc(k)} {esc(str(v))}" for k, v in data["versions"].items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>speechprune report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child, td:nth-child(2) {{ text-align: left; }}
tr.recommended {{ background: #e6f4ea; font-weight: 600; }}
figure {{ margin: 1.5em 0; }} img.plot {{ max-width: 100%; border: 1px solid #eee; }}
.note {{ color: #555; font-size: 13px; }}
</style></head>
<body>
<h1>speechprune report</h1>
<p>{esc(c['model'])} on {esc(c['data'])}, label <b>{esc(c['label'])}</b>.</p>
<p><b>Recommended:</b> {esc(rec['name'])} — {esc(rec['kind'])}: accuracy {rec['accuracy']:.3f}
({100 * rec['retained']:.1f}&nbsp;% of the unpruned model), {rec['gmacs_per_s']:.2f} GMACs per second of audio.</p>
<table id="candidates"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
{''.join(figs)}
<p class="note">CPU: {esc(str(hw.get('cpu')))}, {esc(str(hw.get('cores')))} cores, load {esc(str(hw.get('load_avg')))}.
Versions: {versions}.</p>
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
