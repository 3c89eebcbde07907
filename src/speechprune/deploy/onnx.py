"""``speechprune export onnx``: any model folder speechprune writes → ONNX fp32 (+ int8), verified and timed.

What is exported is the classifier as the folder's own loader runs it, from model inputs to logits (a model without
a head: to ``last_hidden_state``):

* Whisper (stock, layer-pruned, structured-pruned, students): ``input_features`` (B × mel × 2·window), a **fixed**
  window — the encoder's position table has exactly that many rows; dynamic batch.
* wav2vec2 / HuBERT / WavLM / data2vec-audio (and their students): ``input_values`` (B × samples) +
  ``attention_mask`` (B × samples), dynamic batch and time, so pooling covers valid frames exactly as in torch.

Export uses torch's TorchScript exporter (``dynamo=False``: no extra dependency, and it handles every family's
data-dependent shape code by tracing). int8 is onnxruntime *dynamic* quantization of MatMul/Gemm weights only
(``MatMulConstBOnly``: attention's activation × activation products stay fp32) with convolutions left in fp32 —
the recipe that keeps a speech front end intact. With ``data``, every variant is run on real clips (the split the
model was trained with, its test part, when the folder records one): max |logit − torch logit|, top-1 agreement
with torch and accuracy (Wilson 95 % interval) of each. Latency of torch, ORT fp32 and ORT int8 is measured
interleaved in one process (one call of each per round, same clip, same thread count) with the load average
recorded. Everything lands in ``OUT/export.json``; ``OUT`` is written atomically (a failure leaves nothing).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from speechprune.errors import SpeechpruneError

#: Opsets accepted: 14 is the first with the ops attention needs; 20 is the newest the TorchScript exporter writes.
ONNX_OPSETS = range(14, 21)
DEFAULT_OPSET = 17
FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)`` or one clear error naming the extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise SpeechpruneError(
            f"ONNX export needs onnx and onnxruntime ({exc.name} is missing): pip install 'speechprune[onnx]'"
        ) from exc
    return onnx, onnxruntime


def check_opset(opset: int) -> int:
    if opset not in ONNX_OPSETS:
        raise SpeechpruneError(f"unsupported ONNX opset {opset}: choose {ONNX_OPSETS.start}..{ONNX_OPSETS.stop - 1} "
                               f"(default {DEFAULT_OPSET})")
    return int(opset)


# ---------------------------------------------------------------------------------------------------------------
# the model to export


@dataclass
class Exportable:
    """A loaded folder: the module to export (inputs → logits), how to prepare clips, and what it is."""

    module: nn.Module
    family: str
    kind: str  # "transformers" | "student"
    input_names: list[str]
    classes: list[str] | None
    prepare: Any  # waveforms -> dict of tensors (input_names order)
    window_samples: int | None  # Whisper: the fixed window in samples

    def example(self, seconds: float = 1.0, batch: int = 1) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(0)
        n = int(round(seconds * 16_000))
        waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for _ in range(batch)]
        return self.prepare(waves)


class _Logits(nn.Module):
    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.names, args)))
        logits = getattr(out, "logits", None)
        return logits if logits is not None else out.last_hidden_state


def load_for_export(model_dir: str | Path) -> Exportable:
    """Load any folder speechprune writes (transformers classifier/encoder, stock or pruned, or a distilled
    student) for export; a folder that is none of these is a clear :class:`SpeechpruneError`."""
    from speechprune.compress.distill.export import CONFIG_FILE, load_student
    from speechprune.models import load_encoder
    from speechprune.models.classifier import class_names, classifier_inputs, is_classifier

    path = Path(model_dir)
    if not path.is_dir():
        raise SpeechpruneError(f"{path} is not a folder: give a model folder written by speechprune")
    if (path / CONFIG_FILE).is_file():
        student = load_student(path).eval()
        names = ["input_features"] if student.family == "whisper" else ["input_values", "attention_mask"]
        window = student.front_end.window_positions * 320 if student.family == "whisper" else None
        return Exportable(_Logits(student, names).eval(), student.family, "student", names, student.classes,
                          lambda w: {k: v for k, v in student.prepare(w).items() if k in names}, window)
    if not (path / "config.json").is_file():
        raise SpeechpruneError(f"{path} is not a model folder: no config.json or speechprune_student.json")
    enc = load_encoder(path)
    names = ["input_features"] if enc.family == "whisper" else ["input_values", "attention_mask"]
    classes = class_names(enc) if is_classifier(enc) else None
    window = enc.window_positions * 320 if enc.family == "whisper" else None

    def prepare(waves: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        kw = classifier_inputs(enc, waves)
        return {k: kw[k] for k in names}

    return Exportable(_Logits(enc.model.eval(), names).eval(), enc.family, "transformers", names, classes,
                      prepare, window)


# ---------------------------------------------------------------------------------------------------------------
# export


def _torch_export(ex: Exportable, path: Path, opset: int) -> None:
    example = ex.example(1.0, batch=2)
    dynamic: dict[str, dict[int, str]] = {"logits": {0: "batch"}}
    for name in ex.input_names:
        dynamic[name] = {0: "batch"} if name == "input_features" else {0: "batch", 1: "samples"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks; verified numerically below
        torch.onnx.export(ex.module, tuple(example[n] for n in ex.input_names), str(path),
                          input_names=ex.input_names, output_names=["logits"], dynamic_axes=dynamic,
                          opset_version=opset, dynamo=False, do_constant_folding=True)


def quantize_int8(src: Path, dst: Path) -> None:
    """onnxruntime dynamic quantization: int8 weights for MatMul/Gemm with a constant weight; convs stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                     extra_options={"MatMulConstBOnly": True})


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(sess: Any, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    return sess.run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score 95 % interval of a proportion k/n."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, c - h), min(1.0, c + h)]


def export_onnx(
    model_dir: str | Path,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    dataset: Any = None,
    label: str | None = None,
    indices: Sequence[int] | None = None,
    threads: int = 1,
    seconds: float = 1.0,
    latency_repeats: int = 20,
    batch_size: int = 8,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``model_dir`` to ``out`` (see the module docstring); returns what ``export.json`` holds."""
    from speechprune.utils.io import atomic_dir, write_json_atomic

    check_opset(opset)
    if quantize not in (None, "int8"):
        raise SpeechpruneError(f"--quantize must be int8 (or omitted), got {quantize!r}")
    onnx, ort = require_onnx()
    dest = Path(out)
    if dest.exists() and not overwrite:
        raise SpeechpruneError(f"{dest} exists; choose another OUT or pass --overwrite")
    if dataset is not None and not label:
        raise SpeechpruneError("--data needs --label (the column the classifier predicts)")
    ex = load_for_export(model_dir)
    if dataset is not None and ex.classes is None:
        raise SpeechpruneError(f"{model_dir} has no classification head: verification on data needs a classifier")
    if dataset is not None:
        dataset.labels(label)  # a clear DataError for an unknown column, before any work
    variants = ["fp32"] + (["int8"] if quantize else [])
    with atomic_dir(dest) as tmp:
        t0 = time.perf_counter()
        _torch_export(ex, tmp / FILES["fp32"], opset)
        onnx.checker.check_model(str(tmp / FILES["fp32"]))
        export_seconds = time.perf_counter() - t0
        if quantize:
            quantize_int8(tmp / FILES["fp32"], tmp / FILES["int8"])
        for name in ("preprocessor_config.json", "config.json",  # labels and input preparation travel along
                     "feature_extraction_speechprune_whisper.py"):
            if (Path(model_dir) / name).is_file():
                shutil.copyfile(Path(model_dir) / name, tmp / name)
        sessions = {v: _session(tmp / FILES[v], threads) for v in variants}
        res: dict[str, Any] = {
            "model": str(model_dir), "family": ex.family, "kind": ex.kind, "opset": opset,
            "exporter": f"torch.onnx (TorchScript, torch {torch.__version__})", "onnx": onnx.__version__,
            "onnxruntime": ort.__version__, "inputs": ex.input_names,
            "dynamic_axes": {n: (["batch"] if n == "input_features" else ["batch", "samples"])
                             for n in ex.input_names},
            "fixed_window_samples": ex.window_samples,
            "quantization": ({"method": "onnxruntime dynamic", "weight_type": "QInt8", "ops": ["MatMul", "Gemm"],
                              "MatMulConstBOnly": True, "convolutions": "fp32"} if quantize else None),
            "files": {v: FILES[v] for v in variants},
            "size_bytes": {"torch": _torch_size(model_dir), **{v: (tmp / FILES[v]).stat().st_size
                                                               for v in variants}},
            "export_seconds": round(export_seconds, 2),
            "check": _self_check(ex, sessions),
            **(extra or {}),
        }
        if dataset is not None:
            res["verification"] = verify(ex, sessions, dataset, label, indices, batch_size=batch_size)
        if latency_repeats > 0:
            res["latency"] = latency(ex, sessions, threads=threads, seconds=seconds, repeats=latency_repeats)
        write_json_atomic(tmp / "export.json", res)
    return res


def _torch_size(model_dir: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


@torch.no_grad()
def _self_check(ex: Exportable, sessions: dict[str, Any]) -> dict[str, Any]:
    """Max |logit diff| vs torch on random clips of two lengths (batch 2 and 3: batch and time axes exercised)."""
    diffs: dict[str, float] = {v: 0.0 for v in sessions}
    for seconds, batch in ((1.0, 2), (0.73, 3)):
        inputs = ex.example(seconds, batch)
        ref = ex.module(*(inputs[n] for n in ex.input_names)).numpy()
        for v, sess in sessions.items():
            diffs[v] = max(diffs[v], float(np.abs(_run(sess, inputs) - ref).max()))
    return {"max_abs_logit_diff": diffs, "clips": "random noise, 1.0 s × 2 and 0.73 s × 3"}


@torch.no_grad()
def verify(ex: Exportable, sessions: dict[str, Any], dataset: Any, label: str, indices: Sequence[int] | None,
           *, batch_size: int = 8) -> dict[str, Any]:
    """Run torch and every ONNX variant on real clips: logit differences, top-1 agreement, accuracy."""
    from speechprune.data.batching import iter_batches

    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if not idx:
        raise SpeechpruneError(f"{dataset.name}: no clips to verify on (empty split)")
    truth_names = dataset.labels(label)
    lookup = {c: i for i, c in enumerate(ex.classes or [])}
    logits: dict[str, list[np.ndarray]] = {"torch": [], **{v: [] for v in sessions}}
    for _, wavs in iter_batches(dataset, batch_size, idx):
        inputs = ex.prepare(wavs)
        logits["torch"].append(ex.module(*(inputs[n] for n in ex.input_names)).numpy())
        for v, sess in sessions.items():
            logits[v].append(_run(sess, inputs))
    arr = {k: np.concatenate(v) for k, v in logits.items()}
    truth = np.array([lookup.get(str(truth_names[i]), -1) for i in idx])
    top = {k: a.argmax(-1) for k, a in arr.items()}
    out: dict[str, Any] = {"n": len(idx), "label": label, "variants": {}}
    for k in arr:
        correct = int((top[k] == truth).sum())
        row = {"accuracy": correct / len(idx), "accuracy_ci95": wilson(correct, len(idx))}
        if k != "torch":
            agree = int((top[k] == top["torch"]).sum())
            row.update(max_abs_logit_diff=float(np.abs(arr[k] - arr["torch"]).max()),
                       top1_agreement=agree / len(idx), top1_agreement_ci95=wilson(agree, len(idx)))
        out["variants"][k] = row
    return out


@torch.no_grad()
def latency(ex: Exportable, sessions: dict[str, Any], *, threads: int = 1, seconds: float = 1.0,
            repeats: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Median ms per clip (batch 1) of torch and each ONNX variant, interleaved round by round."""
    inputs = ex.example(seconds, 1)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    runners = {"torch": lambda: ex.module(*(inputs[n] for n in ex.input_names)),
               **{v: (lambda s=s: _run(s, inputs)) for v, s in sessions.items()}}
    times: dict[str, list[float]] = {k: [] for k in runners}
    load_before = os.getloadavg()
    try:
        for r in range(warmup + repeats):
            for k, fn in runners.items():
                t0 = time.perf_counter()
                fn()
                if r >= warmup:
                    times[k].append(1000 * (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(old)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"ms_median": med, "ms_min": {k: min(v) for k, v in times.items()},
            "speedup_vs_torch": {k: med["torch"] / m for k, m in med.items() if k != "torch"},
            "threads": threads, "clip_seconds": seconds, "batch": 1, "repeats": repeats, "interleaved": True,
            "load_avg_before": load_before[0], "load_avg_after": os.getloadavg()[0], "cpu_cores": os.cpu_count()}

