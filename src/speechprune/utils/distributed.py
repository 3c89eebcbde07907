"""Several processes (``accelerate launch`` / ``torchrun``): which process does single-process work, and waiting.

A multi-process ``speechprune run`` trains on every process (accelerate's data parallelism) but analyses,
evaluates, profiles and writes on the main process only, while the others wait at a barrier and then read what
the main process wrote. Outside such a launch (``WORLD_SIZE`` unset or 1) every helper here is a cheap no-op, so
single-process code paths pay nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

# Single-process stages (analysis, profiling) can take far longer than gloo's default 30-minute barrier timeout.
BARRIER_TIMEOUT = timedelta(hours=24)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_distributed() -> bool:
    return world_size() > 1


def state() -> Any:
    """accelerate's process state; the first call in a multi-process launch creates the process group (gloo on
    CPU, NCCL on GPUs) with a long timeout, and the Trainer's ``Accelerator`` later reuses it."""
    import torch
    from accelerate import PartialState

    if is_distributed() and not PartialState._shared_state:
        return PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
    return PartialState()


def is_main_process() -> bool:
    return not is_distributed() or state().is_main_process


def rank() -> int:
    return state().process_index if is_distributed() else 0


def local_rank() -> int:
    return state().local_process_index if is_distributed() else 0


_solo_depth = 0


@contextmanager
def solo() -> Iterator[None]:
    """This process runs the block alone (the others wait elsewhere, e.g. at a barrier): inside it
    :func:`is_collective` is false, so work that would otherwise be shared (sharded feature extraction) runs
    entirely in this process instead of waiting for partners that never come."""
    global _solo_depth
    _solo_depth += 1
    try:
        yield
    finally:
        _solo_depth -= 1


def is_collective() -> bool:
    """Whether every process of a multi-process launch reaches this point together (outside any :func:`solo`
    block), so that work can be split between them."""
    return is_distributed() and _solo_depth == 0


def broadcast_object(obj: Any) -> Any:
    """The main process's ``obj`` on every process (a collective call; also a barrier)."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    state()
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in process order, on every process (a collective call; also a barrier)."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    state()
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        state().wait_for_everyone()


@contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first (e.g. fills a cache), then the others run it (and hit the cache)."""
    if not is_distributed():
        yield
        return
    main = is_main_process()
    if not main:
        barrier()
    with solo():
        yield
    if main:
        barrier()
