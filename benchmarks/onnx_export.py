"""ONNX fp32 / int8 export of a real fine-tuned Whisper tiny.en on FSDD (issue 13): int8 top-1 agreement with torch,
accuracy of torch / ORT fp32 / ORT int8 on the FSDD test clips (n and Wilson 95 % intervals), and latency of the
three measured interleaved in one process (1 thread, 1 s window, batch 1), with the load average recorded.

The model is fine-tuned first with the ordinary CLI (kept outside the repository):

    speechprune import-ct2 tiny.en /tmp/bench/whisper-tiny.en
    speechprune finetune /tmp/bench/whisper-tiny.en ../shared/data/fsdd -l word --split-column split --window 1 \
        --epochs 1 --batch-size 16 -o /tmp/bench/ft
    python benchmarks/onnx_export.py /tmp/bench/ft --out benchmarks/results/onnx_whisper-tiny.en

The script runs ``speechprune export onnx`` on the folder (its recorded split: FSDD takes 0-4 = 300 test clips) and
writes ``export.json`` (everything measured) and ``summary.md`` into ``--out`` (the .onnx files are not kept).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="a fine-tuned speechprune folder")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "fsdd"))
    ap.add_argument("--label", default="word")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "onnx_whisper-tiny.en"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp) / "onnx"
        cmd = [sys.executable, "-m", "speechprune.cli.app", "export", "onnx", args.model, str(onnx_dir),
               "--quantize", "int8", "--data", args.data, "-l", args.label, "--threads", str(args.threads),
               "--latency-repeats", str(args.repeats)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        res = json.loads((onnx_dir / "export.json").read_text())
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_dir / "export.json", out / "export.json")
    res["command"] = " ".join(["speechprune", *cmd[3:]])
    (out / "export.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "summary.md").write_text(summary(res))
    print(summary(res))


def summary(res: dict) -> str:
    v, lat, size = res["verification"], res["latency"], res["size_bytes"]
    lines = [f"# ONNX export of {res['model']} ({res['family']}, opset {res['opset']})", "",
             f"Verification on {v['n']} FSDD test clips (label `{v['label']}`); latency: batch 1, "
             f"{lat['clip_seconds']} s window, {lat['threads']} thread(s), {lat['repeats']} interleaved rounds, "
             f"load average {lat['load_avg_before']:.1f} → {lat['load_avg_after']:.1f} on {lat['cpu_cores']} cores "
             "(shared machine: absolute times inflated, ratios measured interleaved).", "",
             "| variant | size (MB) | accuracy | 95 % CI | top-1 agreement with torch | max abs logit diff | "
             "median ms | speed-up vs torch |", "|---|---|---|---|---|---|---|---|"]
    for k in ("torch", "fp32", "int8"):
        row = v["variants"][k]
        ci = row["accuracy_ci95"]
        agree = f"{100 * row['top1_agreement']:.2f} %" if "top1_agreement" in row else "–"
        diff = f"{row['max_abs_logit_diff']:.2e}" if "max_abs_logit_diff" in row else "–"
        speed = f"{lat['speedup_vs_torch'][k]:.2f}×" if k != "torch" else "1×"
        name = {"torch": "torch (safetensors)", "fp32": "ORT fp32", "int8": "ORT int8"}[k]
        lines.append(f"| {name} | {size[k] / 1e6:.1f} | {100 * row['accuracy']:.2f} % | "
                     f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f} % | {agree} | {diff} | {lat['ms_median'][k]:.2f} | {speed} |")
    lines += ["", f"Command: `{res.get('command', '')}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
