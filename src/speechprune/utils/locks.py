"""Advisory locks on output folders and cache entries, so that two processes never write the same place.

``PathLock(target)`` takes an exclusive ``flock`` on a small file ``.<name>.lock`` beside ``target`` (created on
demand, holding the owner's pid). A second process asking for the same target gets :class:`LockedError` at once —
"… is in use by pid N" — instead of silently replacing the first one's result. The operating system drops the lock
when its process dies (even with kill -9), so a crash never leaves a stale lock behind; the lock file itself is
removed on release (the acquire loop re-checks that the file it locked is still the one at the path, so removing it
cannot let two processes in at once).

Locks are re-entrant within a process (a ``run`` fine-tunes several models into folders it already holds) and, in a
multi-process launch, taken by the main process only (the other ranks write nothing).
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
from pathlib import Path
from typing import Any

from speechprune.errors import SpeechpruneError


class LockedError(SpeechpruneError):
    """The output folder or cache entry is being written by another process."""


# resolved lock path -> [fd, count]; a process holds each lock once, however often it asks for it
_HELD: dict[str, list[int]] = {}


def lock_file_for(target: str | os.PathLike[str]) -> Path:
    t = Path(target)
    return t.parent / f".{t.name}.lock"


def _owner(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return pid or "?"


class PathLock:
    """Exclusive lock on ``target`` (a folder or file path; it need not exist). Use as a context manager, or call
    :meth:`acquire` / :meth:`release`. ``what`` names the target in the error message."""

    def __init__(self, target: str | os.PathLike[str], what: str = "output") -> None:
        self.target = Path(target)
        self.what = what
        self.path = lock_file_for(self.target)
        self._key = str(self.path.parent.resolve() / self.path.name) if self.path.parent.exists() else str(self.path)
        self.held = False

    def acquire(self) -> "PathLock":
        from speechprune.utils.distributed import is_main_process

        if self.held:
            return self
        if not is_main_process():  # only the main process writes; the other ranks must not contend with it
            self.held = True
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = str(self.path.parent.resolve() / self.path.name)
        if self._key in _HELD:
            _HELD[self._key][1] += 1
            self.held = True
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise LockedError(
                        f"{self.what} {self.target} is in use by pid {_owner(self.path)} (another speechprune "
                        f"process is writing it); wait for it to finish or choose another path") from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous owner removed the file between our open and our lock: try again
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[self._key] = [fd, 1]
        self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        entry = _HELD.get(self._key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _HELD[self._key]
        try:
            os.unlink(self.path)  # while still holding the lock: see the module docstring
        except OSError:
            pass
        os.close(entry[0])

    def __enter__(self) -> "PathLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def hold(target: str | os.PathLike[str], what: str = "output") -> PathLock:
    """Acquire a lock on ``target`` for the rest of this process (a CLI command's output), and return it."""
    return PathLock(target, what).acquire()


def release_all() -> None:
    """Release every lock this process holds (the CLI calls it when a command ends; also run at exit) — the
    lock files beside outputs disappear with them."""
    for key, (fd, _count) in list(_HELD.items()):
        del _HELD[key]
        try:
            os.unlink(key)
        except OSError:
            pass
        try:
            os.close(fd)
        except OSError:
            pass


atexit.register(release_all)
