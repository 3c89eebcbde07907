"""The layer-analysis benchmark of issue 3, in one command: graph convexity against ``nnconvexity`` and the full
13 × 13 similarity matrices (linear CKA, mutual kNN).

It runs the two measurement scripts one after the other (never at the same time: each one times itself on the
two cores, and running them together would halve both numbers) and forwards the options it does not use:

    python benchmarks/analysis.py                      # both, full size grid (about 25 minutes on 2 cores)
    python benchmarks/analysis.py --only convexity     # benchmarks/analysis_convexity.py only
    python benchmarks/analysis.py --only similarity --sizes 20000 --cases cka cka_fp32

Results: ``benchmarks/results/analysis_convexity.{json,md}`` and ``benchmarks/results/analysis_similarity.{json,md}``
(see ``benchmarks/results/README.md`` for the recorded runs and the load they ran under).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {"convexity": HERE / "analysis_convexity.py", "similarity": HERE / "analysis_similarity.py"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(SCRIPTS), help="run one of the two benchmarks")
    args, rest = parser.parse_known_args()
    names = [args.only] if args.only else ["convexity", "similarity"]
    if rest and not args.only:
        parser.error("extra options belong to one script: give --only convexity or --only similarity")
    for name in names:
        cmd = [sys.executable, str(SCRIPTS[name]), *rest]
        print("+", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
