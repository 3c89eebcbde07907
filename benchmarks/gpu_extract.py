"""speechprune's extraction against a bare transformers forward, on a GPU (issue 12).

Same model object, same batch, same dtype, all hidden states, one process, interleaved rounds in a fresh random
order each round (slow phases of the machine hit both alike):

* **bare**: a numpy batch → ``torch.from_numpy`` → ``.to(device)`` → ``model(input_values, output_hidden_states=
  True)`` → synchronise. No pooling, no copy back, nothing written: the ceiling.
* **speechprune**: ``speechprune.features.extract_features`` — the real code path: input preparation, one forward
  with every state hooked, padding-aware mean pooling on the device, the pooled rows copied back and written as
  cache shards, consolidation — into a fresh cache folder each round (no cache hits). Its per-call identity cost
  (hashing weights and audio for the cache key) is timed separately and reported (``fingerprint_s``): a real run
  pays it once per data set; it is inside the timed speechprune rounds.

Throughput is clips/s over ``--batches`` batches per round (median over rounds); TFLOP/s = 2 × analytic MACs per
clip (speechprune.profile.macs) × clips/s / 1e12. ``dtype`` ``bf16`` is bf16 weights on CUDA and autocast on the
CPU for both sides (what ``--dtype bf16`` means in speechprune); fp32 on CUDA runs TF32 matmuls for both.

Targets (issue 12, wav2vec2-base shapes, 10 s clips × 32, bf16, H100/H200): speechprune ≥ 0.9× bare and
≥ 130 TFLOP/s. Timing depends only on shapes, so the randomly initialised ``default:wav2vec2`` base config stands in
for the real checkpoint. Usage:

    python benchmarks/gpu_extract.py --device cuda --dtype bf16 --seconds 10 --batch 32       # the target shape
    python benchmarks/gpu_extract.py --device cuda --dtype fp32 --seconds 10 --batch 8        # TF32
    python benchmarks/gpu_extract.py --device cpu --tiny                                      # a smoke run (CI)

Writes ``--out`` (JSON; default benchmarks/results/gpu_extract_<device>_<dtype>.json) with the device name,
versions, settings, per-round times and ``os.getloadavg()``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def noise_dataset(n: int, seconds: float, seed: int) -> Any:
    from speechprune.data.types import AudioDataset, AudioItem

    rng = np.random.default_rng(seed)
    length = int(seconds * 16_000)
    items = [AudioItem(f"c{i}", {"y": str(i % 10)}, array=(0.1 * rng.standard_normal(length)).astype(np.float32),
                       sampling_rate=16_000) for i in range(n)]
    return AudioDataset(items, ["y"], name=f"noise{n}x{seconds:g}s-{seed}")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default:wav2vec2", help="A wav2vec2-family model (built-in or folder).")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=8, help="Batches per timed round (per side).")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="Smoke run: tiny:wav2vec2, 1 s × 4, 2 batches, 2 rounds.")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.tiny:
        args.model, args.seconds, args.batch, args.batches, args.rounds = "tiny:wav2vec2", 1.0, 4, 2, 2

    import transformers

    from speechprune.features import extract_features
    from speechprune.models import load_encoder
    from speechprune.profile.macs import count_macs
    from speechprune.utils.device import bf16_weights, place_model, resolve_device

    dev = resolve_device(args.device)
    enc = load_encoder(args.model)
    if enc.family == "whisper":
        raise SystemExit("this benchmark times the wav2vec2 family (raw-waveform input); pick such a model")
    samples = int(args.seconds * 16_000)
    macs_per_clip = count_macs(enc.model, samples)
    place_model(enc.model, dev, args.dtype)
    model = enc.model.eval()
    weights_bf16 = args.dtype == "bf16" and bf16_weights(dev)
    param_dtype = next(model.parameters()).dtype
    n_clips = args.batch * args.batches
    ds = noise_dataset(n_clips, args.seconds, seed=0)
    waves = np.stack([ds.items[i].array for i in range(n_clips)])

    def autocast() -> Any:
        if args.dtype == "bf16" and not weights_bf16:
            return torch.autocast(dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    normalize = bool(getattr(enc.feature_extractor, "do_normalize", False))

    def bare() -> None:
        with torch.inference_mode(), autocast():
            for b in range(args.batches):
                x = waves[b * args.batch:(b + 1) * args.batch]
                if normalize:  # the model's own input preparation, as in a plain transformers loop
                    x = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-7)
                t = torch.from_numpy(np.ascontiguousarray(x)).to(dev, dtype=param_dtype, non_blocking=True)
                out = model(input_values=t, output_hidden_states=True)
                assert len(out.hidden_states) == enc.num_states
        sync(dev)

    work = Path(tempfile.mkdtemp(prefix="gpu_extract-"))
    count = [0]

    def speechprune() -> None:
        count[0] += 1
        feats = extract_features(enc, ds, pooling="mean", batch_size=args.batch, dtype=args.dtype, device=str(dev),
                                 cache_dir=work / f"c{count[0]}", progress=False)
        assert feats.num_rows == n_clips and len(feats.layers) == enc.num_states
        sync(dev)
        shutil.rmtree(work / f"c{count[0]}", ignore_errors=True)

    t0 = time.perf_counter()
    enc.fingerprint()
    ds.fingerprint(labels=False, segments=False)
    fingerprint_s = time.perf_counter() - t0
    load_before = os.getloadavg()
    bare()  # warm-up both (kernels, allocator, cuDNN autotuning)
    speechprune()
    times: dict[str, list[float]] = {"bare": [], "speechprune": []}
    rng = random.Random(0)
    fns = {"bare": bare, "speechprune": speechprune}
    for _ in range(args.rounds):
        order = list(fns)
        rng.shuffle(order)
        for name in order:
            sync(dev)
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    res: dict[str, Any] = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        cps = n_clips / med
        res[name] = {"median_s": med, "clips_per_s": cps, "tflops": 2 * macs_per_clip * cps / 1e12, "times_s": ts}
    ratio = res["speechprune"]["clips_per_s"] / res["bare"]["clips_per_s"]
    report = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "model": args.model, "family": enc.family, "dtype": args.dtype,
        "bf16": None if args.dtype != "bf16" else ("weights" if weights_bf16 else "autocast"),
        "tf32": bool(dev.type == "cuda" and torch.backends.cuda.matmul.allow_tf32),
        "seconds": args.seconds, "batch": args.batch, "batches_per_round": args.batches, "rounds": args.rounds,
        "clips_per_round": n_clips, "macs_per_clip": macs_per_clip,
        "bare": res["bare"], "speechprune": res["speechprune"], "ratio_speechprune_to_bare": ratio,
        "fingerprint_s": fingerprint_s,
        "targets": {"ratio_min": 0.9, "tflops_min_h100_h200_w2v2_base_10s_x32_bf16": 130.0},
        "load_avg_before": load_before, "load_avg_after": load_after,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "cuda": torch.version.cuda, "python": platform.python_version()},
        "tiny_smoke_run": bool(args.tiny),
    }
    out = args.out or RESULTS / f"gpu_extract_{dev.type}_{args.dtype}{'_tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['device_name']} ({dev}), {args.model}, {args.seconds:g} s × {args.batch}, {args.dtype}"
          f"{' (' + report['bf16'] + ')' if report['bf16'] else ''}{', TF32' if report['tf32'] else ''}")
    for name in ("bare", "speechprune"):
        r = res[name]
        print(f"  {name:12s} {r['clips_per_s']:9.1f} clips/s  {r['tflops']:8.2f} TFLOP/s  (median {r['median_s']:.3f} s)")
    print(f"  ratio speechprune / bare = {ratio:.3f} (target ≥ 0.9); fingerprint {fingerprint_s:.2f} s per call; "
          f"load {load_before[0]:.1f} → {load_after[0]:.1f}")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
