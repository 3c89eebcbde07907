"""The built-in compressions, one plug-in module each, registered in the order ``speechprune run`` runs them and
lists their candidates. A new method is a module like these (see :mod:`speechprune.compress.base`)."""

from speechprune.compress.methods import distillation, removal, structured, truncation  # noqa: F401

# (import order above is alphabetical for the linters; registration order is fixed here)
from speechprune.compress.base import register

for _m in (truncation.Truncation(), removal.Removal(), distillation.Distillation(), structured.Structured()):
    register(_m)
