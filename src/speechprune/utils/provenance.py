"""Provenance for every JSON file speechprune writes: library versions, the speechprune git commit (when the
package runs from a git checkout), host, device, and — inside a run — its seed and configuration.

:func:`provenance` builds the record; :func:`speechprune.utils.io.write_json_atomic` attaches it under the key
``"provenance"`` to every mapping it writes (files that other loaders read strictly opt out). Run-level facts
(seed, device, config) are set once with :func:`set_context` (``speechprune run`` does this) and appear in every
file written afterwards in the process.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

_CONTEXT: dict[str, Any] = {}


def set_context(**values: Any) -> None:
    """Record run-level facts (``seed``, ``device``, ``config``, ...) for every later provenance record."""
    _CONTEXT.update({k: v for k, v in values.items() if v is not None})


def clear_context() -> None:
    _CONTEXT.clear()


@contextlib.contextmanager
def context(**values: Any):  # type: ignore[no-untyped-def]
    old = dict(_CONTEXT)
    set_context(**values)
    try:
        yield
    finally:
        _CONTEXT.clear()
        _CONTEXT.update(old)


@functools.lru_cache(maxsize=1)
def _static() -> dict[str, Any]:
    versions: dict[str, str] = {"python": platform.python_version()}
    for mod in ("speechprune", "torch", "transformers", "numpy", "scipy", "sklearn"):
        with contextlib.suppress(Exception):
            versions[mod] = str(__import__(mod).__version__)
    return {"versions": versions, "git_commit": git_commit(), "host": {"platform": platform.platform(),
                                                                        "machine": platform.machine()}}


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the speechprune checkout this package runs from (``+dirty`` with local changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(**extra: Any) -> dict[str, Any]:
    """The provenance record: versions, git commit, host, device, seed and config (when known), time written."""
    rec = dict(_static())
    rec["versions"] = dict(rec["versions"])
    rec.setdefault("device", _CONTEXT.get("device", "cpu"))
    rec.update(_CONTEXT)
    rec.update({k: v for k, v in extra.items() if v is not None})
    rec["written_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return rec
