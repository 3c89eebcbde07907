"""The layer-analysis benchmarks (issues 3 and 18), in one command.

* ``convexity`` — graph convexity against ``nnconvexity`` (speed-up and score agreement at N = 1 000 / 5 000) and
  alone at 20 000 / 50 000 (``analysis_convexity.py``);
* ``kernels`` — mutual kNN against its GEMM floor and platonic-rep's dense form, linear CKA against the ssyrk
  floor, interleaved in one process (``analysis_kernels.py``);
* ``similarity`` — cost of the full 13 × 13 similarity matrices per case in fresh processes
  (``analysis_similarity.py``);
* ``scale`` — the full analysis on 100 000 rows × 13 states × 768 dims (``analysis_scale.py``).

It runs the measurement scripts one after the other (never at the same time: each one times itself on the two
cores, and running them together would halve the numbers) and forwards the options it does not use:

    python benchmarks/analysis.py                      # convexity, kernels, scale (hours on a shared 2-core box)
    python benchmarks/analysis.py --only convexity     # benchmarks/analysis_convexity.py only
    python benchmarks/analysis.py --only kernels --sizes 20000

Results: ``benchmarks/results/analysis_{convexity,kernels,similarity,scale}.{json,md}`` (see
``benchmarks/results/README.md`` for the recorded runs and the load they ran under).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {"convexity": HERE / "analysis_convexity.py", "kernels": HERE / "analysis_kernels.py",
           "similarity": HERE / "analysis_similarity.py", "scale": HERE / "analysis_scale.py"}
DEFAULT = ("convexity", "kernels", "scale")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(SCRIPTS), help="run one of the benchmarks")
    args, rest = parser.parse_known_args()
    names = [args.only] if args.only else list(DEFAULT)
    if rest and not args.only:
        parser.error("extra options belong to one script: give --only NAME")
    for name in names:
        cmd = [sys.executable, str(SCRIPTS[name]), *rest]
        print("+", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
