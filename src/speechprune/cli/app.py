"""Typer application: wires the subcommand modules together and turns :class:`SpeechpruneError` into a clean
one-line message with exit code 2 (no traceback for user errors)."""

from __future__ import annotations

import importlib
import sys

import typer

from speechprune.cli.help_format import install as _install_help_format

_install_help_format()

app = typer.Typer(
    name="speechprune",
    help=(
        "Analyse, prune and profile transformer speech models (wav2vec 2.0, HuBERT, WavLM, data2vec-audio, "
        "Whisper encoder).\n\nLayer index convention everywhere: state 0 = input to the first transformer layer, "
        "state i = output of layer i."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Subcommand modules, in the order they appear in --help.
COMMAND_MODULES = [
    "speechprune.cli.cmd_info",
    "speechprune.cli.cmd_extract",
    "speechprune.cli.cmd_analyze",
    "speechprune.cli.cmd_finetune",
    "speechprune.cli.cmd_evaluate",
    "speechprune.cli.cmd_prune",
    "speechprune.cli.cmd_prune_structured",
    "speechprune.cli.cmd_run",
    "speechprune.cli.cmd_profile",
    "speechprune.cli.cmd_import_ct2",
    "speechprune.cli.cmd_demo",
    "speechprune.cli.cmd_distill",
    "speechprune.cli.cmd_export",
]

@app.callback()
def _global_options(
    ctx: typer.Context,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only warnings and errors (no progress bars)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print debug messages (also transformers' info)."),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Progress bars, ours and transformers'/datasets' (also per command)."),
) -> None:
    """Options for every command, given before its name: `speechprune -q finetune ...`."""
    from speechprune.utils.verbosity import configure

    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose contradict each other", param_hint="--quiet/--verbose")
    # A command's own --no-progress must silence the libraries' bars too, so it is honoured here as well.
    rest = [*getattr(ctx, "protected_args", []), *ctx.args]
    configure(-1 if quiet else 1 if verbose else 0, progress=progress and "--no-progress" not in rest)
    if quiet:
        from speechprune.cli.common import console

        console.quiet = True


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a subcommand still being written must not break the others
        if exc.name != _name:
            raise
        continue
    _mod.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors (exit 2), Ctrl-C → exit 130, never a traceback (see cli.guard)."""
    from speechprune.cli.guard import run
    from speechprune.utils.malloc import tune_allocator

    tune_allocator()  # before any large tensor: glibc's mmap/munmap of big buffers page-faults every batch
    sys.exit(run(app, argv))


if __name__ == "__main__":
    main()
