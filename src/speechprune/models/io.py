"""Saving: ``save_pretrained`` output that reloads with plain ``transformers`` ``from_pretrained``.

The folder is built beside the destination and renamed into place, so an interrupted save never leaves a folder
that looks complete. A side file ``speechprune.json`` records what was done (family, kept layers in the original
numbering, window), because the stock config has no place for provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speechprune.utils.io import atomic_dir, write_json_atomic

SIDE_FILE = "speechprune.json"


def save_encoder(
    encoder: Any,
    path: str | Path,
    metadata: dict[str, Any] | None = None,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Save ``encoder`` (a :class:`~speechprune.models.adapter.SpeechEncoder`; this module sits below the adapter
    and takes it as it comes) into ``path`` atomically; ``extra_json`` maps file names to objects written beside the model (a run's
    ``training.json``, ``metrics.json``) so that they appear together with it or not at all."""
    dest = Path(path)
    with atomic_dir(dest) as tmp:
        encoder.model.save_pretrained(tmp, safe_serialization=True)
        if encoder.feature_extractor is not None:
            encoder.feature_extractor.save_pretrained(tmp)
        side = {
            "family": encoder.family,
            "num_layers": encoder.num_layers,
            "kept_layers_of_source": getattr(encoder, "kept_layers", None),
            "source": encoder.source,
            **encoder.preparation_options(),
            **(metadata or {}),
        }
        write_json_atomic(tmp / SIDE_FILE, side)
        for name, obj in (extra_json or {}).items():
            write_json_atomic(tmp / name, obj)
    return dest
