"""Evaluate a classifier: accuracy, macro-F1 and the confusion matrix on a split, plus its cost from the profile
module (parameters, MACs per second of audio, measured latency), as one JSON-friendly dict."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from speechprune.data.batching import iter_batches
from speechprune.data.cliplen import check_max_length, check_min_length
from speechprune.data.types import AudioDataset
from speechprune.errors import DataError
from speechprune.models.adapter import SpeechEncoder
from speechprune.models.classifier import class_names, classifier_inputs


@torch.no_grad()
def predict_logits(
    encoder: SpeechEncoder,
    dataset: AudioDataset,
    indices: Sequence[int] | None = None,
    *,
    batch_size: int = 8,
    max_seconds: float | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Logits (N × C, float32) of the classifier for the given items, in order."""
    model = encoder.model.eval()
    device = next(model.parameters()).device
    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if not idx:
        raise DataError(f"{dataset.name}: nothing to evaluate (empty split)")
    cut = None if max_seconds is None else int(round(max_seconds * 16_000))
    check_min_length(dataset, encoder, idx)
    check_max_length(dataset, encoder, idx, max_seconds)
    out = []
    batches = iter_batches(dataset, batch_size, idx)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=(len(idx) + batch_size - 1) // batch_size, desc="evaluating", unit="batch")
    for _, wavs in batches:
        if cut is not None:
            wavs = [w[:cut] for w in wavs]
        kwargs = {k: v.to(device) for k, v in classifier_inputs(encoder, wavs).items()}
        out.append(model(**kwargs).logits.float().cpu().numpy())
    return np.concatenate(out)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 over the classes that occur in ``y_true`` or ``y_pred``, and the confusion matrix
    (rows = true class, columns = predicted, in ``classes`` order)."""
    c = len(classes)
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (y_true, y_pred), 1)
    tp = np.diag(conf).astype(float)
    support, predicted = conf.sum(1), conf.sum(0)
    present = (support + predicted) > 0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(c), where=denom > 0)
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_f1": {classes[k]: float(f1[k]) for k in range(c) if present[k]},
        "confusion_matrix": {"classes": list(classes), "matrix": conf.tolist()},
    }


def evaluate_classifier(
    encoder: SpeechEncoder,
    dataset: AudioDataset,
    label: str,
    indices: Sequence[int] | None = None,
    *,
    batch_size: int = 8,
    max_seconds: float | None = None,
    profile: bool = True,
    profile_seconds: float = 1.0,
    latency_repeats: int = 10,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics of the classifier on ``dataset[indices]`` and, with ``profile``, its cost for a clip of
    ``profile_seconds`` (Whisper: one window, whatever the clip length)."""
    classes = class_names(encoder)
    index = {c: k for k, c in enumerate(classes)}
    values = dataset.labels(label)
    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    unknown = sorted({values[i] for i in idx} - set(index))
    if unknown:
        raise DataError(f"{dataset.name}: label value(s) {unknown} of {label!r} are not classes of this model "
                        f"({', '.join(classes)})")
    logits = predict_logits(encoder, dataset, idx, batch_size=batch_size, max_seconds=max_seconds, progress=progress)
    y_true = np.array([index[values[i]] for i in idx])
    result: dict[str, Any] = {"label": label, **classification_metrics(y_true, logits.argmax(1), classes)}
    if profile:
        result["cost"] = model_cost(encoder, seconds=profile_seconds, latency_repeats=latency_repeats)
    return result


def model_cost(encoder: SpeechEncoder, *, seconds: float = 1.0, latency_repeats: int = 10) -> dict[str, Any]:
    """Parameters, MACs per second of audio and measured latency (0 repeats: no latency) on the device the model
    is on (it is not moved)."""
    from speechprune.profile.report import profile_model
    from speechprune.utils.device import model_device

    rep = profile_model(encoder.model, seconds=seconds, latency=latency_repeats > 0, repeats=max(latency_repeats, 1),
                        warmup=2, device=str(model_device(encoder.model)))
    lat = rep["latency"]
    return {
        "params_total": rep["params"]["total"],
        "params_parts": rep["params"]["parts"],
        "macs_per_clip": rep["macs"]["total"],
        "macs_per_second": rep["macs"]["total"] / seconds,
        "macs_parts": rep["macs"]["parts"],
        "clip_seconds": seconds,
        "latency_ms_median": None if lat is None else lat["ms_per_batch"]["median"],
        "latency_ms_p90": None if lat is None else lat["ms_per_batch"]["p90"],
        "latency_threads": None if lat is None else lat["settings"]["threads"],
        "latency_device": None if lat is None else lat["settings"]["device"],
        "num_layers": encoder.num_layers,
    }
