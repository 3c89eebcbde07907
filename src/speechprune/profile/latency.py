"""Wall-clock latency and peak memory of one forward pass.

Timing: ``warmup`` untimed forwards, then ``repeats`` timed ones (``time.perf_counter``; on CUDA bracketed by
``torch.cuda.synchronize``). We report median, p90, min, mean and max, because this 2-core VM is noisy
(docs/methods.md §4.3: single outliers up to +30 %, some processes 3-5x slower throughout) — compare medians,
ideally across several fresh processes. Forwards run under ``torch.inference_mode()``; if the model refuses it we
fall back to ``torch.no_grad()`` and record which mode was used.

Peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, reported total and above the
  memory allocated before the run (weights, inputs).
Memory is measured on one extra forward after the timed ones (the sampling thread would perturb timings).

* CPU: the peak resident set size above the RSS just before that forward. A background thread reads
  ``/proc/self/statm`` (resident pages × page size) every ``sample_interval_s`` while the forwards run; torch
  kernels release the GIL, so it keeps sampling during long ops. Before the baseline we call glibc's
  ``malloc_trim(0)`` (when available) so that heap pages freed by earlier work are returned to the OS and cannot
  hide this run's allocations. A short-lived peak between two samples can be missed, so treat it as a lower bound.
  Without ``/proc`` (non-Linux) we fall back to ``ru_maxrss``, which only shows growth beyond the process's
  earlier maximum.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import statistics
import sys
import threading
import time
from typing import Any

import torch
from torch import nn

from speechprune.errors import SpeechpruneError
from speechprune.profile.arch import dummy_inputs, resolve_modules, spec_from_parts
from speechprune.profile.macs import whisper_windows

DTYPES = ("fp32", "bf16")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _maxrss_bytes() -> int:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class RssSampler:
    """Background thread that tracks the maximum RSS (from /proc/self/statm) while it runs."""

    def __init__(self, interval_s: float = 0.0005) -> None:
        self.interval_s = interval_s
        self.baseline = _rss_bytes() or 0
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > self.peak:
                self.peak = rss
            time.sleep(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        rss = _rss_bytes()
        if rss is not None:
            self.peak = max(self.peak, rss)


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without needing numpy."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _forward(root: nn.Module, inputs: dict[str, torch.Tensor], grad_mode: Any, autocast: Any) -> None:
    with grad_mode(), autocast():
        root(**inputs)


def measure_latency(
    model: nn.Module,
    seconds: float = 1.0,
    batch_size: int = 1,
    warmup: int = 3,
    repeats: int = 20,
    threads: int | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    sample_interval_s: float = 0.0005,
) -> dict[str, Any]:
    """Time ``repeats`` forwards of a random batch (``batch_size`` clips of ``seconds``) and measure peak memory.

    At least one untimed forward always runs (it also probes whether ``inference_mode`` works). Peak memory is
    measured on one extra forward after the timed ones, so the sampling thread cannot perturb the timings.

    ``dtype`` ``bf16`` on the CPU runs fp32 weights under ``torch.autocast(device, bfloat16)`` (AMX on this CPU;
    ~2x on batched/long inputs, different numerics); on CUDA it runs a bf16-weight copy of the model on bf16 inputs
    (faster than autocast, which re-casts every weight on every forward, and than TF32). fp32 on CUDA uses TF32
    matmuls (:func:`speechprune.utils.device.resolve_device`). ``threads`` sets ``torch.set_num_threads`` for the run and restores it.
    The model is moved to ``device`` (in place) and put in eval mode for the run (training mode restored after).
    Whisper processes its fixed window per clip (one window per started window for clips longer than it).
    """
    if dtype not in DTYPES:
        raise SpeechpruneError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if repeats < 1 or warmup < 0 or batch_size < 1 or seconds <= 0:
        raise SpeechpruneError("need repeats >= 1, warmup >= 0, batch_size >= 1 and seconds > 0")
    from speechprune.utils.device import bf16_weights, resolve_device

    dev = resolve_device(device)
    mp = resolve_modules(model)
    spec = spec_from_parts(mp)
    root = mp.root.to(dev)
    num_samples = round(seconds * spec.sample_rate)
    windows = whisper_windows(spec, num_samples) if spec.whisper_window is not None else 1
    inputs = dummy_inputs(spec, num_samples, batch_size, dev, windows)
    weights_bf16 = dtype == "bf16" and bf16_weights(dev)
    if weights_bf16:  # a bf16 copy: the caller's model keeps its fp32 weights
        import copy

        root = copy.deepcopy(root).to(torch.bfloat16)
        inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}

    def autocast() -> Any:
        if dtype == "bf16" and not weights_bf16:
            return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    old_threads = torch.get_num_threads()
    was_training = root.training
    root.eval()
    grad_mode: Any = torch.inference_mode
    times: list[float] = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            _forward(root, inputs, grad_mode, autocast)  # first warm-up run also probes inference_mode
        except RuntimeError as exc:  # pragma: no cover - depends on the model
            if "inference" not in str(exc).lower():
                raise
            grad_mode = torch.no_grad
        sync()
        for _ in range(max(warmup - 1, 0)):
            _forward(root, inputs, grad_mode, autocast)
        sync()
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            _forward(root, inputs, grad_mode, autocast)
            sync()
            times.append((time.perf_counter() - t0) * 1000.0)
        mem = _MemoryProbe(dev, sample_interval_s)  # separate forward: the sampler thread must not perturb timing
        with mem:
            _forward(root, inputs, grad_mode, autocast)
            sync()
    finally:
        if threads is not None:
            torch.set_num_threads(old_threads)
        root.train(was_training)

    audio_s = batch_size * seconds
    stats = {
        "median": statistics.median(times),
        "p90": _percentile(times, 0.9),
        "min": min(times),
        "mean": statistics.fmean(times),
        "max": max(times),
    }
    return {
        "ms_per_batch": stats,
        "ms_per_audio_second": {k: v / audio_s for k, v in stats.items()},
        "real_time_factor": stats["median"] / 1000.0 / audio_s,
        "times_ms": times,
        "memory": mem.result(),
        "settings": {
            "seconds": seconds,
            "batch_size": batch_size,
            "windows": windows if spec.whisper_window is not None else None,
            "warmup": warmup,
            "repeats": repeats,
            "threads": torch.get_num_threads() if threads is None else threads,
            "device": str(dev),
            "dtype": dtype,
            "bf16": None if dtype != "bf16" else ("weights" if weights_bf16 else "autocast"),
            "tf32": bool(dev.type == "cuda" and torch.backends.cuda.matmul.allow_tf32),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "grad_mode": grad_mode.__name__,
            "torch_version": torch.__version__,
        },
    }


class _MemoryProbe:
    """Peak memory during the timed forwards: CUDA allocator stats or the CPU RSS sampler (see module doc)."""

    def __init__(self, dev: torch.device, interval_s: float) -> None:
        self.dev = dev
        self.interval_s = interval_s
        self._result: dict[str, Any] = {}

    def __enter__(self) -> _MemoryProbe:
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)
            self._before = torch.cuda.memory_allocated(self.dev)
        else:
            _malloc_trim()
            self._maxrss_before = _maxrss_bytes()
            self._sampler = RssSampler(self.interval_s)
            self._sampler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.dev)
            self._result = {"method": "torch.cuda.max_memory_allocated", "peak_bytes": peak - self._before,
                            "peak_total_bytes": peak, "baseline_bytes": self._before}
            return
        self._sampler.__exit__(*exc)
        s = self._sampler
        if s.baseline:
            self._result = {"method": "rss sampled from /proc/self/statm above the pre-run RSS",
                            "peak_bytes": s.peak - s.baseline, "peak_total_bytes": s.peak, "baseline_bytes": s.baseline,
                            "sample_interval_s": self.interval_s}
        else:  # no /proc: ru_maxrss growth only
            after = _maxrss_bytes()
            self._result = {"method": "ru_maxrss growth (lower bound)", "peak_bytes": after - self._maxrss_before,
                            "peak_total_bytes": after, "baseline_bytes": self._maxrss_before}

    def result(self) -> dict[str, Any]:
        return self._result



# --- interleaved timing of several models (the comparison that ratios and claims rest on) -----------------------
#: A measurement is flagged when its round medians spread more than this (``(max − min) / median``) ...
MAX_SPREAD = 0.5
#: ... or when the process got less than this share of a CPU per thread while timing (others were running) ...
MIN_CPU_SHARE = 0.8
#: ... or when the 1-minute load average per core was above this.
MAX_LOAD_PER_CORE = 1.0


def interleaved_latency(
    forwards: dict[str, Any],
    *,
    rounds: int = 7,
    repeats: int = 5,
    warmup: int = 2,
    threads: int | None = 1,
    max_spread: float = MAX_SPREAD,
    min_cpu_share: float = MIN_CPU_SHARE,
    max_load_per_core: float = MAX_LOAD_PER_CORE,
    remeasure: bool = True,
) -> dict[str, Any]:
    """Time several models against each other: ``forwards`` maps a name to a zero-argument callable that runs one
    forward pass (inputs prepared, inference mode set by the caller).

    Protocol: ``warmup`` untimed calls of every model, then ``rounds`` rounds; in each round every model runs
    ``repeats`` timed calls, models in the fixed cyclic order A B C … started at a different model each round (so
    no model is always first after a pause). Per model the result is the **median of its round medians** with their
    spread ``(max − min) / median``. Recorded with it: thread count, load average before and after, and the
    process's CPU share (CPU time ÷ (wall time × threads) while timing — below 1 when other processes took the
    cores). A measurement is *flagged* when the spread of any model, the CPU share or the load per core is out of
    bounds; a flagged measurement is re-measured once (``remeasure``) and the less disturbed of the two is kept,
    still flagged if it stays out of bounds. Absolute times on a shared machine are inflated; compare ratios
    within one call.
    """
    if rounds < 1 or repeats < 1 or warmup < 0:
        raise SpeechpruneError("need rounds >= 1, repeats >= 1 and warmup >= 0")
    first = _interleaved_once(forwards, rounds, repeats, warmup, threads, max_spread, min_cpu_share,
                              max_load_per_core)
    if not (remeasure and first["flagged"]):
        first["remeasured"] = False
        return first
    second = _interleaved_once(forwards, rounds, repeats, warmup, threads, max_spread, min_cpu_share,
                               max_load_per_core)
    keep = min((first, second), key=lambda r: (r["flagged"], r["settings"]["worst_spread"]))
    keep["remeasured"] = True
    keep["first_attempt"] = {"reasons": first["reasons"], "worst_spread": first["settings"]["worst_spread"],
                             "cpu_share": first["settings"]["cpu_share"]}
    return keep


def _interleaved_once(forwards: dict[str, Any], rounds: int, repeats: int, warmup: int, threads: int | None,
                      max_spread: float, min_cpu_share: float, max_load_per_core: float) -> dict[str, Any]:
    names = list(forwards)
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    n_threads = torch.get_num_threads()
    load_before = os.getloadavg()
    per_round: dict[str, list[list[float]]] = {k: [] for k in names}
    cpu = wall = 0.0
    try:
        for name in names:
            for _ in range(warmup):
                forwards[name]()
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                fn, ts = forwards[name], []
                for _ in range(repeats):
                    c0, t0 = time.process_time(), time.perf_counter()
                    fn()
                    t1, c1 = time.perf_counter(), time.process_time()
                    ts.append((t1 - t0) * 1000.0)
                    wall += t1 - t0
                    cpu += c1 - c0
                per_round[name].append(ts)
    finally:
        torch.set_num_threads(old)
    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    models: dict[str, Any] = {}
    reasons: list[str] = []
    for name in names:
        medians = [statistics.median(ts) for ts in per_round[name]]
        med = statistics.median(medians)
        spread = (max(medians) - min(medians)) / med if med > 0 else float("inf")
        models[name] = {"median_ms": med, "spread": spread, "round_medians_ms": medians,
                        "min_ms": min(min(ts) for ts in per_round[name]), "n": rounds * repeats}
        if spread > max_spread:
            reasons.append(f"{name}: round medians spread {spread:.0%} (> {max_spread:.0%})")
    cpu_share = cpu / (wall * n_threads) if wall > 0 else float("nan")
    if cpu_share < min_cpu_share:
        reasons.append(f"the process got {cpu_share:.0%} of its {n_threads} thread(s)' CPU time while timing "
                       f"(< {min_cpu_share:.0%}): other processes competed for the cores")
    load = max(load_before[0], load_after[0]) / cores
    if load > max_load_per_core:
        reasons.append(f"load average {max(load_before[0], load_after[0]):.2f} on {cores} cores "
                       f"(> {max_load_per_core:g} per core)")
    return {
        "models": models,
        "flagged": bool(reasons),
        "reasons": reasons,
        "settings": {"rounds": rounds, "repeats": repeats, "warmup": warmup, "threads": n_threads, "cores": cores,
                     "order": "cyclic A B C …, rotated each round",
                     "load_before": [round(x, 2) for x in load_before],
                     "load_after": [round(x, 2) for x in load_after],
                     "cpu_share": round(cpu_share, 3), "worst_spread": max(m["spread"] for m in models.values()),
                     "torch_version": torch.__version__},
    }


def model_forward(model: nn.Module, seconds: float = 1.0, batch_size: int = 1) -> Any:
    """A zero-argument callable running one inference forward of a stock transformers model on random input of
    ``seconds`` (for :func:`interleaved_latency`)."""
    mp = resolve_modules(model)
    spec = spec_from_parts(mp)
    root = mp.root.eval()
    num_samples = round(seconds * spec.sample_rate)
    windows = whisper_windows(spec, num_samples) if spec.whisper_window is not None else 1
    inputs = dummy_inputs(spec, num_samples, batch_size, torch.device("cpu"), windows)

    def run() -> None:
        with torch.inference_mode():
            root(**inputs)

    return run


def paired_ratios(result: dict[str, Any], reference: str) -> dict[str, float]:
    """Latency of every model relative to ``reference`` from one :func:`interleaved_latency` result: the median
    over rounds of the ratio of round medians. Both models of a pair ran back to back in the same round, so a slow
    phase of the machine cancels out of the ratio; this is the ratio claims should rest on."""
    ref = result["models"][reference]["round_medians_ms"]
    return {name: statistics.median(a / b for a, b in zip(m["round_medians_ms"], ref))
            for name, m in result["models"].items()}


def latency_mac_check(latency_ms: dict[str, float], macs: dict[str, float], reference: str,
                      tolerance: float = 0.5, ratios: dict[str, float] | None = None) -> dict[str, Any]:
    """Compare each model's latency ratio to ``reference`` with its MAC ratio, and flag contradictions.

    ``ratios`` (from :func:`paired_ratios`) replace the plain ratios of the medians when given.
    A contradiction is a model with fewer MACs than the reference that measures slower (or more MACs and
    faster), or a latency ratio more than ``tolerance`` (relative) away from the MAC ratio. Front ends, memory
    traffic and per-op overheads make the two differ somewhat; a contradiction means the measurement or the cost
    model cannot be trusted for that model.
    """
    out: dict[str, Any] = {}
    t_ref, m_ref = latency_ms.get(reference), macs.get(reference)
    if not t_ref or not m_ref:
        return out
    for name, t in latency_ms.items():
        if name == reference or not t or not macs.get(name):
            continue
        lat_ratio = ratios[name] if ratios and name in ratios else t / t_ref
        mac_ratio = macs[name] / m_ref
        rel = lat_ratio / mac_ratio - 1
        why = None
        if mac_ratio < 0.95 and lat_ratio > 1.0:
            why = f"fewer MACs ({mac_ratio:.2f}×) but slower ({lat_ratio:.2f}×)"
        elif mac_ratio > 1.05 and lat_ratio < 1.0:
            why = f"more MACs ({mac_ratio:.2f}×) but faster ({lat_ratio:.2f}×)"
        elif abs(rel) > tolerance:
            why = f"latency ratio {lat_ratio:.2f} is {rel:+.0%} off the MAC ratio {mac_ratio:.2f}"
        out[name] = {"latency_ratio": lat_ratio, "mac_ratio": mac_ratio, "relative_difference": rel,
                     "contradiction": why}
    return out
