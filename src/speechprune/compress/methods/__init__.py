"""The built-in compressions, one plug-in module each, registered in the order ``speechprune run`` runs them and
lists their candidates. A new method is a module like these (see :mod:`speechprune.compress.base`)."""

from speechprune.compress.base import register
from speechprune.compress.methods import distillation, removal, structured, truncation

for _m in (truncation.Truncation(), removal.Removal(), distillation.Distillation(), structured.Structured()):
    register(_m)
