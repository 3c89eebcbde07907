"""The supported model families, by ``config.model_type``: the one list every part of speechprune consults.

Adding a family: write ``models/<family>.py`` with its adapter and its :class:`~speechprune.models.family.Family`,
add it to :data:`FAMILIES` here, and add its tiny config to the conformance test (``tests/test_families.py``).
"""

from __future__ import annotations

from typing import Any

from speechprune.errors import UnsupportedModelError
from speechprune.models.family import Family
from speechprune.models.wav2vec2_family import WAV2VEC2_FAMILY
from speechprune.models.whisper import WHISPER

FAMILIES: tuple[Family, ...] = (WAV2VEC2_FAMILY, WHISPER)
_BY_TYPE: dict[str, Family] = {t: fam for fam in FAMILIES for t in fam.model_types}
#: Every supported ``config.model_type``.
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(_BY_TYPE)


def check_family(model_type: str) -> str:
    """Return the family for a ``config.model_type`` or raise a clear :class:`UnsupportedModelError`."""
    if model_type not in _BY_TYPE:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; speechprune supports: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return model_type


def family_for(model_type: str) -> Family:
    """The :class:`Family` of a ``config.model_type``."""
    return _BY_TYPE[check_family(model_type)]


def family_of(model: Any) -> Family:
    """The :class:`Family` of a transformers model or of a :class:`~speechprune.models.adapter.SpeechEncoder`."""
    config = getattr(model, "config", None)
    return family_for(str(getattr(config, "model_type", type(model).__name__)))
