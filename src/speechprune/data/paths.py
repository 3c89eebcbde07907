"""Containment of data paths: a metadata file may only point at audio *inside* its data folder.

An audiofolder's ``file_name`` is relative to the folder. ``../`` components or a symbolic link that lead out of
the folder are refused like absolute paths are (a metadata file must not make speechprune read ``/etc/passwd`` or
another user's data). The check resolves symlinks, so a link to a file inside the folder is fine.
"""

from __future__ import annotations

import os
from pathlib import Path

from speechprune.errors import DataError


def inside(root: Path, rel: str, *, source: str, column: str) -> Path:
    """``root / rel`` after checking that it stays inside ``root`` (``root`` already resolved)."""
    if os.path.isabs(rel) or rel.startswith("~"):
        raise DataError(f"{source}: {column} must be relative to the folder, got {rel!r}")
    path = root / rel
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise DataError(f"{source}: {column} {rel!r} cannot be resolved ({exc})") from exc
    if not real.is_relative_to(root):
        how = "a symbolic link" if ".." not in Path(rel).parts else "'..'"
        raise DataError(f"{source}: {column} {rel!r} leads out of the data folder {root} (through {how}, to {real}); "
                        "audio must lie inside the folder")
    return path
