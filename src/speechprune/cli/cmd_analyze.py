"""``speechprune analyze``: which layers matter for my task."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from speechprune.cli.common import AUDIO_COLUMN_HELP, DATA_HELP, console, parse_states
from speechprune.cli.config import config_option
from speechprune.utils.device import DEVICE_HELP


def _split_list(values: List[str]) -> List[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def register(app: typer.Typer) -> None:
    @app.command("analyze")
    def analyze(
        model: str = typer.Argument(..., help="Local folder, hub id, or built-in 'tiny:<family>'."),
        data: str = typer.Argument(..., help=DATA_HELP),
        audio_column: Optional[str] = typer.Option(None, help=AUDIO_COLUMN_HELP),
        label: List[str] = typer.Option([], "--label", "-l", help="Label column(s) to analyse (repeatable)."),
        metrics: List[str] = typer.Option(
            ["similarity", "convexity", "probes"], "--metrics", "-m",
            help="Any of similarity, convexity, probes (repeatable or comma-separated)."),
        similarity: List[str] = typer.Option(
            ["cosine", "cka", "mutual_knn"], "--similarity",
            help="Similarity measures: cosine, cka (linear, biased), cka_debiased, mutual_knn."),
        group: Optional[str] = typer.Option(None, help="Group column (e.g. speaker): probe folds keep groups apart."),
        test_groups: List[str] = typer.Option([], "--test-groups", help="Hold these groups out as the probe test set (e.g. 14,15,16)."),
        split_column: Optional[str] = typer.Option(None, help="Column with train/test values to use as the probe split (e.g. split)."),
        pooling: str = typer.Option("mean", help="mean | mean-all | segment | frames (see `extract --help`)."),
        layers: str = typer.Option("all", help="States: 'all', '0,3,6' or '2-5' (0 = input to layer 1, i = output of layer i)."),
        knn_k: int = typer.Option(10, min=1, help="k of mutual-kNN similarity."),
        convexity_k: int = typer.Option(10, min=1, help="k of the convexity kNN graph (reference: 10)."),
        max_pairs: int = typer.Option(5000, min=1, help="Ordered same-class pairs sampled per class (reference: 5000)."),
        chance_pairs: int = typer.Option(1000, min=0, help="Pairs per class of each convexity permutation baseline "
                                         "(at most --max-pairs; 0 = --max-pairs). Same expected chance level, "
                                         "5x fewer paths; the noise shows in chance_std."),
        convexity_max_rows: int = typer.Option(20_000, min=0, help="Convexity on a seeded random subset of at most "
                                               "this many rows (0 = all): its exact paths grow like N^1.5."),
        permutations: int = typer.Option(3, min=0, help="Label permutations for the chance levels (0 = none)."),
        probe_folds: int = typer.Option(5, min=2, help="Cross-validation folds when no split is given (at most; they adapt to the smallest class or the number of groups)."),
        probe: str = typer.Option("auto", help="Linear probe: logistic (L-BFGS logistic regression), ridge (closed-form "
                                  "least squares, seconds at 100k clips) or auto (ridge above 20,000 clips)."),
        seed: int = typer.Option(0, help="Seed for pair sampling, folds and permutations."),
        processes: int = typer.Option(2, min=1, help="Worker processes for shortest paths."),
        batch_size: int = typer.Option(8, min=1, help="Clips per forward pass."),
        dtype: str = typer.Option("fp32", help="fp32 | bf16 (CUDA: bf16 weights; CPU: autocast)."),
        device: str = typer.Option("auto", help="Extraction and analysis kernels: " + DEVICE_HELP),
        window: Optional[float] = typer.Option(None, help="Whisper only: shorter encoder window in seconds."),
        chunk_seconds: float = typer.Option(30.0, min=0.1, help="Clips longer than this are encoded in chunks of it "
                                            "(bounded memory; mean/frames pooling only; Whisper: at most its window)."),
        segments_dir: Optional[str] = typer.Option(None, help="Folder of .lablaut files (for --pooling segment)."),
        out: Path = typer.Option(..., "--out", "-o", help="Results folder (replaced whole when done)."),
        overwrite: bool = typer.Option(False, help="Replace a non-empty --out folder that analyze did not write."),
        cache_dir: Optional[Path] = typer.Option(None, help="Feature cache root."),
        progress: bool = typer.Option(True, help="Show progress bars."),
        config: Optional[str] = config_option(),
    ) -> None:
        """Layer-to-layer similarity with block structure, per-layer graph convexity and linear probes, each next
        to a chance level, written to OUT as metrics.json, CSV/NPY tables and PNG plots.

        Features are extracted once (cached); an interrupted run resumes. Example:

            speechprune analyze models/whisper-base ../shared/data/emodb -l emotion -l speaker --group speaker --test-groups 14,15,16
        """
        from speechprune import api
        from speechprune.analysis.runner import AnalysisConfig

        cfg = AnalysisConfig(
            labels=list(label), metrics=_split_list(metrics), similarity=_split_list(similarity), pooling=pooling,
            layers=parse_states(layers), batch_size=batch_size, dtype=dtype, device=device, knn_k=knn_k,
            convexity_k=convexity_k, max_pairs=max_pairs, convexity_max_rows=convexity_max_rows or None,
            chance_pairs=chance_pairs or None,
            permutations=permutations, probe_folds=probe_folds, probe=probe,
            split_column=split_column, test_groups=_split_list(test_groups) or None, seed=seed, processes=processes,
            chunk_seconds=chunk_seconds,
        )
        result = api.analyze(model, data, out, cfg, group=group, window=window, segments_dir=segments_dir,
                             cache_dir=cache_dir, overwrite=overwrite, audio_column=audio_column, progress=progress)
        if not result:
            return  # a helper process of a multi-process launch
        for lab, s in result["summary"].items():
            if not lab.startswith("_"):
                console.print(f"[bold]{lab}[/bold]: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                             for k, v in s.items()))
        console.print(f"[green]results[/green] → {out}")
