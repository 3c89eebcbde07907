"""One rule for every command that writes somewhere, checked before any work:

* the path must be usable: a folder output that is an existing *file*, a file output that is a folder, or a place
  under a file or an unwritable folder is a one-line error naming the path (never a traceback mid-run);
* a non-empty output folder that this command did not write (a *foreign* one) is refused unless ``--overwrite``;
  an output is "ours" when it carries the marker file :data:`MARKER` of the same command (a re-run replaces its
  own earlier result), or when the command says so (``owned``: e.g. a resumable run folder);
* the output is locked (:mod:`speechprune.utils.locks`) while the command runs, so a second process writing the
  same place fails at once with "in use by pid N" instead of silently replacing the first one's result;
* a folder is built beside the destination and swapped in whole when complete (:func:`output_folder`), so an
  interrupted command leaves either the old folder or the complete new one — never a half-written one, and never
  stale files of an earlier run beside new results.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from speechprune.errors import SpeechpruneError
from speechprune.utils.locks import PathLock

MARKER = ".speechprune-output.json"


class OutputError(SpeechpruneError):
    """An output path that cannot or must not be written."""


def _existing_ancestor(p: Path) -> Path:
    q = p
    while not q.exists() and q != q.parent:
        q = q.parent
    return q


def _check_parent(p: Path, what: str) -> None:
    anc = _existing_ancestor(p.parent if not p.exists() else p)
    if not anc.is_dir():
        raise OutputError(f"{what} {p}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {p}: folder {anc} is not writable")


def check_dir_target(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """``path`` can be created (or already is) a writable folder."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p} is a file, not a folder")
    _check_parent(p, what)
    return p


def check_file_target(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """``path`` can be (re)written as a file."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} {p} is a folder, not a file")
    _check_parent(p, what)
    if p.exists() and not os.access(p.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {p}: folder {p.parent} is not writable")
    return p


def is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def written_by(p: Path, command: str) -> bool:
    """Whether folder ``p`` holds the output marker of ``command``."""
    try:
        return json.loads((p / MARKER).read_text()).get("command") == command
    except (OSError, ValueError, AttributeError):
        return False


def claim_output(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    command: str,
    what: str = "output folder",
    owned: Callable[[Path], bool] | None = None,
    mark: bool = False,
) -> PathLock:
    """Check ``path`` (see the module docstring), lock it, and return the held lock. ``mark`` creates the folder
    with the command's marker (for commands that fill it step by step, e.g. ``run``)."""
    p = check_dir_target(path, what)
    lock = PathLock(p, what).acquire()
    try:
        if is_nonempty_dir(p) and not overwrite and not written_by(p, command) and not (owned and owned(p)):
            raise OutputError(f"{what} {p} already exists and is not empty (not written by `speechprune {command}`); "
                              "choose another path or pass --overwrite to replace it")
        if mark:
            from speechprune.utils.io import write_json_atomic

            p.mkdir(parents=True, exist_ok=True)
            if not (p / MARKER).exists():
                write_json_atomic(p / MARKER, {"command": command})
    except BaseException:
        lock.release()
        raise
    return lock


def clear_output(path: str | os.PathLike[str], keep: str | os.PathLike[str] | None = None) -> None:
    """Empty a claimed folder for ``--overwrite`` of a command that fills it step by step: the old content is renamed
    away in one step (so no mix of old and new files can appear), then deleted — except ``keep`` (the command's own
    input file, e.g. a run config kept in OUT), which is moved back."""
    import shutil

    p = Path(path)
    if p.is_dir() and any(p.iterdir()):
        kept = Path(keep).resolve() if keep is not None else None
        inside = kept is not None and kept.parent == p.resolve()
        old = p.with_name(f".{p.name}.replaced-{os.getpid()}")
        p.rename(old)
        p.mkdir()
        if inside and (old / kept.name).exists():
            (old / kept.name).rename(p / kept.name)
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def output_folder(path: str | os.PathLike[str], *, overwrite: bool, command: str,
                  what: str = "output folder") -> Iterator[Path]:
    """Claim ``path`` and yield an empty folder beside it; when the block ends without error it replaces ``path``
    as a whole (with the command's marker). On an error or an interruption it is removed and ``path`` is untouched."""
    from speechprune.utils.io import atomic_dir, write_json_atomic

    lock = claim_output(path, overwrite=overwrite, command=command, what=what)
    try:
        with atomic_dir(path) as tmp:
            yield tmp
            write_json_atomic(tmp / MARKER, {"command": command})
    finally:
        lock.release()


def is_run_folder(p: Path) -> bool:
    """An OUT folder that an earlier ``speechprune run`` wrote (also before output markers existed)."""
    return (p / "stages").is_dir() or (p / "config.resolved.json").is_file()


def claim_run_output(out: str | os.PathLike[str], *, overwrite: bool, command: str = "run",
                     config: str | os.PathLike[str] | None = None) -> PathLock:
    """``run`` fills OUT stage by stage and resumes in it: an earlier run's folder is its own, and so is a folder that
    holds nothing but the run's input ``config``; anything else non-empty needs ``--overwrite``, which starts afresh
    (the old content is replaced, not mixed in; the input config is kept)."""
    from speechprune.utils.distributed import is_main_process

    only_config = None if config is None else Path(config).resolve()

    def owned(p: Path) -> bool:
        return is_run_folder(p) or (only_config is not None and
                                    all(q.resolve() == only_config or q.name.startswith(".") for q in p.iterdir()))

    lock = claim_output(out, overwrite=overwrite, command=command, owned=owned)
    if is_main_process():
        if overwrite:
            clear_output(out, keep=config)
        claim_output(out, overwrite=True, command=command, mark=True)
    return lock


def write_owned_text(path: str | os.PathLike[str], text: str, marker: str) -> bool:
    """Write ``text`` (first line ``marker``) to ``path`` unless a file that we did not write sits there (a user's
    file is never replaced). Returns whether it was written."""
    from speechprune.utils.io import write_text_atomic

    p = Path(path)
    if p.exists():
        try:
            first = p.read_text(encoding="utf-8-sig").splitlines()[:1]
        except (OSError, UnicodeDecodeError):
            first = []
        if first != [marker]:
            return False
    write_text_atomic(p, f"{marker}\n{text}")
    return True
