"""How the command line ends: every failure is one line on stderr with a clear exit code, never a traceback.

* a user error (:class:`SpeechpruneError`, a bad option, a file system refusal such as a read-only folder or a path
  that is a file) → ``error: …`` naming the culprit, exit code 2;
* Ctrl-C → ``interrupted …``, exit code 130 (what shells expect after SIGINT); outputs are written atomically, so
  nothing half-written is left behind, and resumable commands say so;
* anything else is a bug: one line plus where to get the traceback (``SPEECHPRUNE_DEBUG=1``), exit code 1.

Warnings of speechprune's own categories (e.g. labels that differ only by case) print as ``warning: …``.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from speechprune.errors import SpeechpruneWarning

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BUG = 1


def one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _os_error_message(exc: OSError) -> str:
    what = exc.strerror or type(exc).__name__
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {what}"
    if exc.filename is not None:
        return f"{exc.filename}: {what}"
    return one_line(exc) or what


def _format_warning(message: Any, category: type, filename: str, lineno: int, line: str | None = None) -> str:
    if issubclass(category, SpeechpruneWarning):
        return f"warning: {one_line(message)}\n"
    return _default_format(message, category, filename, lineno, line)


_default_format = warnings.formatwarning


def run(app: Any, argv: Sequence[str] | None = None) -> int:
    """Run the Typer ``app`` on ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    warnings.formatwarning = _format_warning
    debug = bool(os.environ.get("SPEECHPRUNE_DEBUG"))
    try:
        code = _run(app, argv, debug)
    finally:
        from speechprune.utils.locks import release_all

        release_all()  # the command's output and cache locks, and their lock files
    if code == EXIT_INTERRUPTED:  # also where Typer turned Ctrl-C into a silent Exit(130)
        _say("interrupted: nothing half-written was kept (resumable commands continue with --resume or a re-run)")
    return code


def _run(app: Any, argv: Sequence[str] | None, debug: bool) -> int:
    from speechprune.errors import SpeechpruneError

    try:
        rv = app(args=list(argv) if argv is not None else None, prog_name="speechprune", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except _classes("Exit") as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except (KeyboardInterrupt, *_classes("Abort")):
        return EXIT_INTERRUPTED
    except _classes("ClickException") as exc:
        _say(f"error: {one_line(exc.format_message())}")
        return int(getattr(exc, "exit_code", 0) or EXIT_USER_ERROR)
    except SpeechpruneError as exc:
        if debug:
            raise
        _say(f"error: {one_line(exc)}")
        return EXIT_USER_ERROR
    except OSError as exc:
        if debug:
            raise
        _say(f"error: {_os_error_message(exc)}")
        return EXIT_USER_ERROR
    except Exception as exc:  # a bug: still no traceback unless asked for
        if debug:
            raise
        _say(f"error: internal error ({type(exc).__name__}: {one_line(exc)}); rerun with SPEECHPRUNE_DEBUG=1 for "
             "the traceback and please report it")
        return EXIT_BUG


def _classes(name: str) -> tuple[type, ...]:
    """``name`` from click and from the copy of click that recent Typer versions carry (``typer._click``)."""
    found: list[type] = []
    for module in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            mod = __import__(module, fromlist=[name])
        except ImportError:
            continue
        cls = getattr(mod, name, None)
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


def _say(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except Exception:  # a closed stderr must not turn a clean exit into a traceback
        pass
