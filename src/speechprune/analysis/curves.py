"""Per-layer curves — convexity and probe accuracy against the state index — each drawn next to its chance level,
so that a rise is read against what shuffled labels give rather than against zero."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from speechprune.utils.io import atomic_path  # noqa: E402


def plot_layer_curves(
    path: str | Path,
    labels: Sequence[str],
    convexity: dict[str, list[dict[str, Any]]] | None = None,
    probes: dict[str, list[dict[str, Any]]] | None = None,
    title: str = "",
) -> Path:
    """One column per label: convexity (%) on top, probe accuracy (%) below, chance levels dashed.

    ``convexity[label]`` rows need ``state``, ``score`` and optionally ``chance``/``chance_std``;
    ``probes[label]`` rows need ``state``, ``accuracy``, ``chance_accuracy`` and ``majority_accuracy``.
    """
    rows = [k for k, v in (("convexity", convexity), ("probes", probes)) if v]
    fig, axes = plt.subplots(
        len(rows), len(labels), figsize=(4.2 * len(labels), 3.2 * len(rows)), squeeze=False, sharex=True
    )
    for j, label in enumerate(labels):
        for i, kind in enumerate(rows):
            ax = axes[i][j]
            if kind == "convexity":
                _draw(ax, (convexity or {}).get(label, []), "score", "chance", "chance_std", 1.0, "convexity (%)")
            else:
                data = (probes or {}).get(label, [])
                _draw(ax, data, "accuracy", "chance_accuracy", "chance_accuracy_std", 100.0, "probe accuracy (%)")
                if data and data[0].get("majority_accuracy") is not None:
                    ax.plot([r["state"] for r in data], [100 * r["majority_accuracy"] for r in data],
                            ":", color="grey", label="majority class")
                    ax.legend(fontsize=7, loc="best")
            if i == 0:
                ax.set_title(label)
            if i == len(rows) - 1:
                ax.set_xlabel("state (0 = input to layer 1, i = output of layer i)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    dest = Path(path)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return dest


def _draw(ax: Any, data: list[dict[str, Any]], key: str, chance_key: str, std_key: str, scale: float,
          ylabel: str) -> None:
    if not data:
        ax.set_visible(False)
        return
    states = [r["state"] for r in data]
    ax.plot(states, [scale * r[key] for r in data], "o-", color="C0", label="score")
    if data[0].get(chance_key) is not None:
        chance = [scale * r[chance_key] for r in data]
        ax.plot(states, chance, "--", color="C3", label="chance (shuffled labels)")
        if data[0].get(std_key) is not None:
            lo = [c - scale * r[std_key] for c, r in zip(chance, data)]
            hi = [c + scale * r[std_key] for c, r in zip(chance, data)]
            ax.fill_between(states, lo, hi, color="C3", alpha=0.15)
    ax.set_ylabel(ylabel)
    ax.set_xticks(states)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
