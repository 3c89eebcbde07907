"""How much speechprune (and the libraries it drives) prints: one switch for log level and one for progress bars.

Why here and not in each command: a user who asks for ``--quiet`` or ``--no-progress`` means *everything* —
our own messages and bars, and also transformers' "Loading weights" bars, datasets' "Map" bars and
huggingface_hub's download bars, which otherwise appear no matter what our flags say. Messages go through the
standard :mod:`logging` module under the ``speechprune`` logger, so a Python user can route them like any
other library's.

Levels: ``quiet`` = warnings and errors only; default = info; ``verbose`` = debug (and transformers' info).
"""

from __future__ import annotations

import logging
import os

__all__ = ["LOGGER_NAME", "configure", "get_logger", "progress_enabled", "set_progress"]

LOGGER_NAME = "speechprune"
_state = {"progress": True}


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``speechprune`` logger, or its child ``speechprune.<name>``."""
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name.removeprefix(LOGGER_NAME + '.')}")


def configure(verbosity: int = 0, progress: bool = True) -> None:
    """Set the log level (-1 quiet, 0 normal, 1 verbose) of speechprune and its libraries, and the progress bars.

    Installs one stderr handler on the ``speechprune`` logger the first time (a Python user who configured
    logging themselves keeps their handlers: we only add ours when the logger has none).
    """
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logger = get_logger()
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbosity > 0
                                               else "%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(logging.ERROR if verbosity < 0 else logging.INFO if verbosity > 0
                                 else logging.WARNING)
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    set_progress(progress and verbosity >= 0)


def set_progress(enabled: bool) -> None:
    """Turn every progress bar on or off: ours (see :func:`progress_enabled`), transformers', datasets' and
    huggingface_hub's."""
    _state["progress"] = bool(enabled)
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "0" if enabled else "1"
    try:
        from transformers.utils import logging as hf_logging

        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    except ImportError:  # pragma: no cover
        pass
    for module, on, off in (("datasets", "enable_progress_bars", "disable_progress_bars"),
                            ("huggingface_hub.utils", "enable_progress_bars", "disable_progress_bars")):
        try:
            mod = __import__(module, fromlist=[on])
            getattr(mod, on if enabled else off)()
        except (ImportError, AttributeError):  # pragma: no cover - optional or older library
            pass


def progress_enabled(requested: bool = True) -> bool:
    """Whether a bar should be drawn: the caller's own request and the global switch must both allow it."""
    return bool(requested) and _state["progress"]
