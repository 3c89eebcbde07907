"""Help text that reads like a Unix tool's: no ``<bool>`` type tag on flags, click-style type names.

Typer >= 0.20 renders every option's type as ``<str>``, ``<bool>``, ``<list[str]>`` — noise for a flag such as
``--overwrite`` (it takes no value) and unfamiliar next to the ``TEXT``/``INTEGER``/``PATH`` that users of
click-based tools (transformers' and accelerate's CLIs included) know. We keep Typer and adjust only this one
rendering hook, once, when the app is built.
"""

from __future__ import annotations

import re
from typing import Any

_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "bool": "BOOLEAN", "file": "FILE",
          "directory": "DIRECTORY"}


def _click_style(type_str: str) -> str:
    """``<list[str]>`` -> ``TEXT...``, ``<int>`` -> ``INTEGER``, a choice ``<a|b>`` -> ``[a|b]``."""
    inner = type_str[1:-1] if type_str.startswith("<") and type_str.endswith(">") else type_str
    repeated = re.fullmatch(r"list\[(.*)\]", inner)
    if repeated:
        inner = repeated.group(1)
    name = _NAMES.get(inner, f"[{inner}]" if "|" in inner else inner.upper())
    return name + ("..." if repeated else "")


def install() -> None:
    """Patch Typer's option/argument type display (idempotent). A Typer without the hook (before 0.20, e.g. the
    0.1x of the GPU machines' image, where every command crashed on ``cls.display_type_rich``) already shows
    click's names: nothing to patch."""
    try:
        from typer.core import TyperArgument, TyperOption
    except ImportError:  # pragma: no cover - older Typer renders click's own metavars
        return
    for cls in (TyperOption, TyperArgument):
        original = getattr(cls, "display_type_rich", None)
        if original is None or getattr(original, "_speechprune", False):
            continue

        def display(self: Any, ctx: Any, _original: Any = original) -> str | None:
            if getattr(self, "is_flag", False) or getattr(self, "count", False):
                return None  # a flag takes no value: no type to show
            shown = _original(self, ctx)
            return None if shown is None else _click_style(shown)

        display._speechprune = True  # type: ignore[attr-defined]
        cls.display_type_rich = display  # type: ignore[method-assign]
