"""Files: atomic writes (a file is either absent or complete, never half-written, so an interrupted job leaves
nothing that a later run could mistake for a finished result) and strict YAML reading for config files."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from speechprune.errors import SpeechpruneError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; on success rename it onto ``path``.

    The rename is atomic on POSIX when source and destination share a file system, which is why the temporary
    file is created beside the destination rather than in /tmp. On any exception the temporary file is removed.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; results are ordinary files
    try:
        yield tmp_path
        if tmp_path.exists():  # writers such as safetensors re-create the file 0600: give it the umask's mode
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty folder beside ``path``; when the block finishes, it replaces ``path`` (a model folder is then
    either the old one or the complete new one, never half-written). On any exception it is removed."""
    import shutil

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a saved model is an ordinary, shareable folder
    try:
        yield tmp
        replace_dir(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, dest: Path) -> None:
    """Move the finished folder ``src`` onto ``dest``, replacing any old ``dest`` with two renames, so ``dest`` is
    always either the old or the new complete folder (``src`` must be on the same file system)."""
    import shutil

    old = dest.with_name(f".{dest.name}.old")
    apply_umask(src)
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    src.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def recover_swap(dest: Path, src: Path, complete: str) -> bool:
    """Finish or undo a :func:`replace_dir` that a crash interrupted between its two renames, where ``dest`` is
    missing while the old copy (``.<dest>.old``) and/or the new one (``src``) are on disk. The new copy is taken
    when it holds the file ``complete`` (written last), else the old one. Returns whether anything was recovered."""
    import shutil

    dest, src = Path(dest), Path(src)
    old = dest.with_name(f".{dest.name}.old")
    if dest.exists():
        return False
    if (src / complete).is_file():
        src.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
        return True
    if (old / complete).is_file():
        old.rename(dest)
        return True
    return False


def apply_umask(folder: Path) -> None:
    """Give a finished folder the permissions the user's umask asks for (0644/0755 with umask 022): libraries such
    as safetensors create their files 0600, which made models and features unreadable to the rest of a group."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for f in files:
            path = os.path.join(root, f)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, provenance: bool = True) -> None:
    """Write ``obj`` as JSON atomically. A mapping gets a ``"provenance"`` record (versions, git commit, seed,
    device, config: :mod:`speechprune.utils.provenance`) unless it has one or ``provenance=False`` (files that
    another loader reads as a strict schema)."""
    if provenance and isinstance(obj, dict) and "provenance" not in obj:
        from speechprune.utils.provenance import provenance as record

        obj = {**obj, "provenance": record()}
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML file that holds a mapping (a config file); a missing file, bad YAML or a non-mapping is a
    :class:`SpeechpruneError` naming the file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SpeechpruneError(f"config file {p} not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8-sig")) or {}  # a BOM (Windows editors) is not a key
    except UnicodeDecodeError as exc:
        raise SpeechpruneError(f"config file {p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise SpeechpruneError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SpeechpruneError(f"config file {p} must hold a mapping of option names to values")
    return data
