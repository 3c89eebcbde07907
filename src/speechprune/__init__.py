"""speechprune: find and remove the redundant parts of transformer speech representation models.

Pipeline (one sub-package per stage): ``data`` → ``models`` → ``features`` → ``analysis`` → ``compress`` →
``train`` → ``profile`` → ``report``, with a thin Typer CLI in ``cli``. That is the order the stages *run* in; the
order they *import* each other in (each package imports only from those below it) is ``errors``/``utils`` →
``data`` → ``models`` → ``importers``, ``asr``, ``features``, ``profile`` → ``train`` → ``analysis`` →
``compress`` → ``report`` → ``pipeline`` → ``cli`` (``tests/test_layering.py`` holds it, with the reasons).

Layer index convention, used in every flag, file and plot: **state 0 is the input to the first transformer
layer, state i is the output of transformer layer i** (1-based), so a model with L layers has L+1 states.
See :mod:`speechprune.models.adapter` for what each family's state 0 contains and how final LayerNorms are
treated.
"""

__version__ = "0.1.0"
