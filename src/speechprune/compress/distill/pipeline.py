"""Glue between distillation and ``speechprune run``: one student per ``compress.distill.mimickers`` entry.

Entries are ``kind:hidden:blocks`` (``mlp:64:1``, ``transformer:256:1``) or ``none`` (the head trained directly
on the front end's output). Each student is distilled from the run's fine-tuned baseline and listed as a
candidate; :func:`student_run_cost` gives the profile stage the same cost fields as for transformers models.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from speechprune.errors import SpeechpruneError


def parse_mimicker(spec: str) -> dict[str, Any]:
    parts = spec.split(":")
    if parts[0] == "none":
        return {"mimicker": "none", "hidden": 1, "blocks": 1}
    if len(parts) != 3:
        raise SpeechpruneError(f"mimicker {spec!r}: use kind:hidden:blocks (e.g. mlp:64:1) or none")
    try:
        return {"mimicker": parts[0], "hidden": int(parts[1]), "blocks": int(parts[2])}
    except ValueError as exc:
        raise SpeechpruneError(f"mimicker {spec!r}: hidden and blocks must be integers") from exc


def run_distill_stage(run: Any) -> dict[str, Any]:
    from speechprune.compress.distill.train import DistillConfig, distill
    from speechprune.models import load_encoder
    from speechprune.train.finetune import work_dir_for
    from speechprune.train.loop import TrainConfig

    c = run.cfg
    teacher = load_encoder(run.results["baseline"]["candidates"][0]["model_dir"], device=run.device)
    candidates = []
    for spec in c.compress.distill.mimickers:
        opts = parse_mimicker(spec)
        stage = lambda n: TrainConfig(epochs=n, batch_size=c.batch_size, lr=1e-3, schedule="constant",  # noqa: E731
                                      warmup_ratio=0.0, max_grad_norm=None, patience=5, seed=c.seed,
                                      device=c.device, mixed_precision=c.train.mixed_precision)
        cfg = DistillConfig(**opts, stage1=stage(c.compress.distill.stage1_epochs),
                            stage2=stage(c.compress.distill.stage2_epochs), seed=c.seed)
        name = "distill-" + spec.replace(":", "-")
        out = run.out / "models" / name
        resume = work_dir_for(out).exists()
        res = distill(teacher, run.dataset, c.label, out, cfg, run.split_spec(), resume=resume, overwrite=not resume,
                      progress=run.progress)
        if "test" not in res:
            continue  # another process of a multi-process run: the main process evaluates and saves
        candidates.append({
            "name": name, "kind": f"distilled {opts['mimicker']} mimicker (h = {opts['hidden']}, "
                                  f"{opts['blocks']} block{'s' if opts['blocks'] > 1 else ''})"
            if opts["mimicker"] != "none" else "head on the front end (no mimicker)",
            "model_dir": str(out), "accuracy": res["test"]["accuracy"], "macro_f1": res["test"]["macro_f1"],
            "num_layers": 0, "kept_layers": [],
            "train_seconds": sum(res.get(s, {}).get("train_seconds", 0.0) for s in ("stage1", "stage2")),
            "cost_fn": "speechprune.compress.distill.pipeline:student_run_cost",
        })
    return {"candidates": candidates}


@torch.inference_mode()
def student_run_cost(model_dir: str, seconds: float = 1.0, latency_repeats: int = 20) -> dict[str, Any]:
    """Parameters, analytic MACs and median latency of a saved student for one clip of ``seconds``."""
    from speechprune.compress.distill.evaluate import dummy_student_inputs
    from speechprune.compress.distill.export import load_student
    from speechprune.compress.distill.train import student_cost

    student = load_student(model_dir).eval()
    cost = student_cost(student, None, seconds)
    x = dummy_student_inputs(student, seconds)
    times = []
    for i in range(latency_repeats + 2):
        t0 = time.perf_counter()
        student(**x)
        if i >= 2:
            times.append(1000 * (time.perf_counter() - t0))
    return {"params_total": cost["params_total"], "macs_per_clip": cost["macs_per_clip"],
            "macs_per_second": cost["macs_per_clip"] / seconds, "clip_seconds": seconds,
            "latency_ms_median": float(np.median(times)) if times else None,
            "latency_threads": torch.get_num_threads(), "num_layers": 0}
