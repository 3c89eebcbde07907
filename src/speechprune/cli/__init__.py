"""The ``speechprune`` command line: one Typer app, one module per subcommand (``cmd_*.py``).

Each ``cmd_*`` module exposes ``register(app)``; :mod:`speechprune.cli.app` imports them lazily-cheaply so that
``speechprune --help`` stays fast and the heavy libraries load only inside commands.
"""
