"""The help-format patch must never stop the CLI from starting, whatever Typer is installed."""

from __future__ import annotations

import pytest


def test_install_skips_a_typer_without_the_rich_type_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """Typer releases before the ``display_type_rich`` hook (the GPU machines' image had one) made every command
    crash at start-up with AttributeError; ``install`` must leave such classes alone."""
    import typer.core

    from speechprune.cli import help_format

    class Bare:  # an option class with no display_type_rich, as in older Typer
        pass

    monkeypatch.setattr(typer.core, "TyperOption", Bare)
    monkeypatch.setattr(typer.core, "TyperArgument", Bare)
    help_format.install()  # must not raise
    assert not hasattr(Bare, "display_type_rich")


def test_cli_help_starts_and_shows_click_style_types() -> None:
    from typer.testing import CliRunner

    from speechprune.cli.app import app

    result = CliRunner().invoke(app, ["profile", "--help"])
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
