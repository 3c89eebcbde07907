"""Distillation: one student per ``mimickers`` entry, distilled from the run's fine-tuned baseline.

Entries are ``kind:hidden:blocks`` (``mlp:64:1``, ``transformer:256:1``) or ``none`` (the head trained directly
on the front end's output). Students are not transformers classes, so this method loads and measures its
candidates itself (:meth:`Distillation.cost`: the same cost fields as for transformers models).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from speechprune.compress.base import Candidate, Compression, Task, Teacher, Workspace, metrics_of, resumable
from speechprune.errors import SpeechpruneError


@dataclass
class DistillOptions:
    """``compress.distill`` of ``speechprune run``."""

    enabled: bool = False
    mimickers: list[str] = field(default_factory=lambda: ["mlp:64:1"])
    stage1_epochs: int = 10
    stage2_epochs: int = 5


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


def describe(opts: dict[str, Any]) -> str:
    if opts["mimicker"] == "none":
        return "head on the front end (no mimicker)"
    return (f"distilled {opts['mimicker']} mimicker (h = {opts['hidden']}, "
            f"{opts['blocks']} block{'s' if opts['blocks'] > 1 else ''})")


class Distillation(Compression):
    name = "distill"
    options = DistillOptions
    inputs = ("baseline",)
    trains = True

    def validate(self, options: DistillOptions) -> None:
        from speechprune.compress.distill.mimickers import KINDS

        if not options.mimickers:
            raise SpeechpruneError("mimickers: none given (e.g. mlp:64:1)")
        for spec in options.mimickers:
            opts = parse_mimicker(spec)
            if opts["mimicker"] not in KINDS:
                raise SpeechpruneError(f"mimicker {spec!r}: kind must be one of {', '.join(KINDS)}")
            if opts["hidden"] < 1 or opts["blocks"] not in (1, 2):
                raise SpeechpruneError(f"mimicker {spec!r}: hidden must be >= 1 and blocks 1 or 2")
        for key in ("stage1_epochs", "stage2_epochs"):
            if getattr(options, key) < 1:
                raise SpeechpruneError(f"{key} must be >= 1, got {getattr(options, key)}")

    def run(self, teacher: Teacher, task: Task, out: Workspace, train: Any, options: DistillOptions
            ) -> list[Candidate]:
        from speechprune.compress.distill.train import DistillConfig, distill
        from speechprune.train.loop import TrainConfig

        enc = teacher.load()
        enc.model.to(out.torch_device())  # the teacher pass runs where training does
        candidates = []
        for spec in options.mimickers:
            opts = parse_mimicker(spec)
            stage = lambda n: TrainConfig(epochs=n, batch_size=out.batch_size, lr=1e-3, schedule="constant",  # noqa: E731
                                          warmup_ratio=0.0, max_grad_norm=None, patience=5, seed=train.seed,
                                          device=train.device, mixed_precision=train.mixed_precision)
            cfg = DistillConfig(**opts, stage1=stage(options.stage1_epochs), stage2=stage(options.stage2_epochs),
                                seed=train.seed)
            name = "distill-" + spec.replace(":", "-")
            path = out.model_dir(name)
            res = distill(enc, task.dataset, task.label, path, cfg, task.split, **resumable(path),
                          progress=out.progress)
            if "test" not in res:
                continue  # another process of a multi-process run: the main process evaluates and saves
            candidates.append(Candidate(name, describe(opts), str(path), metrics_of(res["test"]), {
                "num_layers": 0, "kept_layers": [],
                "train_seconds": sum(res.get(s, {}).get("train_seconds", 0.0) for s in ("stage1", "stage2"))},
                self.name))
        return candidates

    def load(self, candidate: Candidate) -> Any:
        from speechprune.compress.distill.export import load_student

        return load_student(candidate.model_dir)

    def cost(self, candidate: Candidate, seconds: float, latency_repeats: int) -> dict[str, Any]:
        """Parameters, analytic MACs and median latency of a saved student for one clip of ``seconds``."""
        import torch

        from speechprune.compress.distill.evaluate import dummy_student_inputs
        from speechprune.compress.distill.train import student_cost

        with torch.inference_mode():
            student = self.load(candidate).eval()
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

    def forward(self, candidate: Candidate, seconds: float) -> Any:
        import torch

        from speechprune.compress.distill.evaluate import dummy_student_inputs

        student = self.load(candidate).eval()
        x = dummy_student_inputs(student, seconds)

        def run() -> None:
            with torch.inference_mode():
                student(**x)

        return run

    def predict(self, model: Any, dataset: Any, indices: Any, batch_size: int = 8) -> list[str]:
        from speechprune.compress.distill.evaluate import student_logits

        if len(indices) == 0:
            return []
        return [model.classes[k] for k in student_logits(model, dataset, indices, batch_size=batch_size).argmax(1)]
