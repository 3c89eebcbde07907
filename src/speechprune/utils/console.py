"""The one console every message goes to: standard error, so that standard output stays machine-readable (the
commands print their JSON results there)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)
