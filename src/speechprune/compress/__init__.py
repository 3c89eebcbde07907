"""Compressions: layer pruning (``layers``), structured pruning (``structured``), distillation (``distill``)."""
