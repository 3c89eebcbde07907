"""Compressions: layer pruning (``layers``), structured pruning (``structured``), distillation (``distill``).

Importing the package registers the built-in compressions (:mod:`.methods`), so the registry in :mod:`.base`
is complete whenever any part of ``speechprune.compress`` is in use, without ``base`` importing the methods
that build on it (which would make the two import each other).
"""

import speechprune.compress.methods  # noqa: F401  (registers the built-in four)
