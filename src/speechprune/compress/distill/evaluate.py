"""Evaluating a student: test metrics from audio, the FLOP-counter cross-check of its analytic MACs, and latency
measured back-to-back against the teacher in one process.

Latency protocol (:func:`compare_latency`): the same random model inputs for every model (Whisper: one window of
log-mel; wav2vec2 family: a waveform of ``seconds``), ``torch.inference_mode``, ``time.perf_counter``, a fixed
thread count; models are timed in interleaved rounds, each round in a fresh seeded random order, so slow phases of
a shared machine and position effects hit all of them alike, and the median over all repeats is reported with
``os.getloadavg()``.
It is the protocol of :func:`speechprune.profile.latency.measure_latency` (which needs a stock model), applied to
any module.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from speechprune.compress.distill.student import StudentClassifier, front_end_of
from speechprune.data.batching import iter_batches
from speechprune.data.types import AudioDataset
from speechprune.errors import DataError
from speechprune.models.adapter import SpeechEncoder
from speechprune.train.evaluate import classification_metrics


@torch.no_grad()
def student_logits(student: StudentClassifier, dataset: AudioDataset, indices: Sequence[int], *,
                   batch_size: int = 16, max_seconds: float | None = None) -> np.ndarray:
    """Logits of the student for ``dataset[indices]`` from audio (the whole student runs, front end included)."""
    student.eval()
    cut = None if max_seconds is None else int(round(max_seconds * 16_000))
    out = []
    for _, wavs in iter_batches(dataset, batch_size, [int(i) for i in indices]):
        if cut is not None:
            wavs = [w[:cut] for w in wavs]
        out.append(student.predict(wavs).float().cpu().numpy())
    return np.concatenate(out)


def evaluate_student(student: StudentClassifier, teacher: SpeechEncoder | None, dataset: AudioDataset, label: str,
                     indices: Sequence[int], *, batch_size: int = 16, max_seconds: float | None = None
                     ) -> dict[str, Any]:
    """Accuracy, macro-F1 and confusion matrix of the student on ``dataset[indices]`` (and, with ``teacher``, how
    often the two agree)."""
    classes = student.classes
    index = {c: k for k, c in enumerate(classes)}
    values = dataset.labels(label)
    unknown = sorted({values[i] for i in indices} - set(index))
    if unknown:
        raise DataError(f"{dataset.name}: label value(s) {unknown} of {label!r} are not classes of the student")
    logits = student_logits(student, dataset, indices, batch_size=batch_size, max_seconds=max_seconds)
    y = np.array([index[values[i]] for i in indices])
    res: dict[str, Any] = {"label": label, **classification_metrics(y, logits.argmax(1), classes)}
    if teacher is not None:
        from speechprune.train.evaluate import predict_logits

        t = predict_logits(teacher, dataset, indices, batch_size=batch_size, max_seconds=max_seconds)
        res["teacher_accuracy"] = float((t.argmax(1) == y).mean())
        res["agreement_with_teacher"] = float((t.argmax(1) == logits.argmax(1)).mean())
    return res


def dummy_student_inputs(student: StudentClassifier, seconds: float = 1.0, batch_size: int = 1
                         ) -> dict[str, torch.Tensor]:
    return student.front_end.dummy_inputs(seconds, batch_size, torch.Generator().manual_seed(0))


def flop_counter_macs(module: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """MACs (= FlopCounterMode FLOPs ÷ 2) of one forward of ``module(**inputs)``, eager attention forced."""
    from torch.utils.flop_counter import FlopCounterMode

    from speechprune.profile.flops import eager_attention

    counter = FlopCounterMode(display=False, depth=None)
    was = module.training
    module.eval()
    try:
        with eager_attention(module), torch.no_grad(), counter:
            module(**inputs)
    finally:
        module.train(was)
    return counter.get_total_flops() // 2


def compare_latency(
    models: dict[str, tuple[nn.Module, dict[str, torch.Tensor]]],
    *,
    rounds: int = 5,
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Median forward time (ms) of each ``name → (module, inputs)``, timed in ``rounds`` interleaved rounds of
    ``repeats`` forwards after ``warmup`` untimed ones. Returns per model ``median_ms``, ``p90_ms``, ``min_ms`` and
    the settings (threads, load averages before and after)."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {k: [] for k in models}
    try:
        for module, inputs in models.values():
            module.eval()
            with torch.inference_mode():
                for _ in range(warmup):
                    module(**inputs)
        order = list(models)
        rng = random.Random(0)
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                module, inputs = models[name]
                with torch.inference_mode():
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        module(**inputs)
                        times[name].append((time.perf_counter() - t0) * 1000.0)
    finally:
        torch.set_num_threads(old)
    res: dict[str, Any] = {}
    for name, ts in times.items():
        xs = sorted(ts)
        res[name] = {"median_ms": statistics.median(xs), "p90_ms": xs[int(0.9 * (len(xs) - 1))], "min_ms": xs[0],
                     "n": len(xs)}
    res["_settings"] = {"rounds": rounds, "repeats": repeats, "warmup": warmup,
                        "threads": threads if threads is not None else old, "loadavg_before": load_before,
                        "loadavg_after": os.getloadavg(), "torch": torch.__version__}
    return res


def teacher_latency_inputs(teacher: SpeechEncoder, seconds: float = 1.0) -> dict[str, torch.Tensor]:
    """Random model inputs for the teacher's stock classifier of the same shape as the student's."""
    return front_end_of(teacher).dummy_inputs(seconds, 1, torch.Generator().manual_seed(0))


def latency_gain_check(lat: dict[str, Any], teacher_key: str, student_key: str, mac_gain: float) -> dict[str, Any]:
    """Measured speed-up vs the speed-up the MAC counts predict."""
    gain = lat[teacher_key]["median_ms"] / lat[student_key]["median_ms"]
    return {"latency_gain": gain, "mac_gain": mac_gain, "latency_over_mac_gain": gain / mac_gain}


