"""What the CPU can do fast. bf16 autocast is ~2× faster than fp32 on CPUs with AVX-512-BF16 or AMX, but on CPUs
without native bf16 (e.g. AVX2-only) PyTorch falls back to a scalar path that is ~100× *slower* than fp32."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    flags = cpu_flags()
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_peak_gflops(dtype: "torch.dtype", n: int = 2048, repeats: int = 3) -> float:
    """Best-of-``repeats`` GFLOP/s of an n³ matrix product right now: the ceiling that benchmarks report their
    achieved rate against (measured in the same process, so it also reflects the current machine load)."""
    import time

    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
