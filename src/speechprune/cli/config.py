"""YAML config files for any subcommand, with command-line flags overriding them.

``--config run.yaml`` is an eager option: its callback reads the file and installs it as click's ``default_map``,
so every value in the file becomes the default of the matching option and anything given on the command line
still wins. Keys are the option names (``batch_size`` or ``batch-size``). Unknown keys and wrong types fail at
once with a message naming the key and what is allowed, before any model is loaded.
"""

from __future__ import annotations

from typing import Any

import typer

from speechprune.utils.io import load_yaml


def _apply_config(ctx: Any, _param: Any, value: str | None) -> str | None:
    if not value:
        return value
    data = load_yaml(value)
    params = {p.name: p for p in ctx.command.params if p.name and p.name != "config"}
    unknown = [k for k in data if str(k).replace("-", "_") not in params]
    if unknown:
        allowed = ", ".join(sorted(params))
        raise typer.BadParameter(f"unknown key(s) {unknown} in {value}; allowed keys: {allowed}", param_hint="--config")
    resolved: dict[str, Any] = {}
    for key, val in data.items():
        param = params[str(key).replace("-", "_")]
        if type(param).__name__.endswith("Argument"):
            raise typer.BadParameter(
                f"key {key!r} in {value} is a positional argument; give it on the command line", param_hint="--config"
            )
        values = (val if isinstance(val, list) else [val]) if param.multiple else [val]
        try:
            converted = _coerce(param, ctx, values if param.multiple else values[0])
        except typer.BadParameter as exc:
            raise typer.BadParameter(
                f"key {key!r} in {value}: {exc.message}", param_hint="--config"
            ) from exc
        resolved[param.name] = converted
    ctx.default_map = {**(ctx.default_map or {}), **resolved}
    return value


def _coerce(param: Any, ctx: Any, value: Any) -> Any:
    """Convert one YAML value the way the option converts command-line text (Typer ≥ 0.20 has its own parameter
    runtime; older Typer exposes click's ``type.convert``)."""
    if hasattr(param, "get_runtime_param"):
        return param.get_runtime_param().coerce(value, param=param, ctx=ctx)
    return param.type.convert(value, param, ctx)


def config_option() -> Any:
    """The ``--config`` option to add to a Typer command."""
    return typer.Option(
        None,
        "--config",
        help="YAML file of option values (keys = option names); flags on the command line override it.",
        is_eager=True,
        callback=_apply_config,
    )
