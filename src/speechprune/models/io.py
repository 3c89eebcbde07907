"""Saving: ``save_pretrained`` output that reloads with plain ``transformers`` ``from_pretrained``.

The folder is built beside the destination and renamed into place, so an interrupted save never leaves a folder
that looks complete. A side file ``speechprune.json`` records what was done (family, kept layers in the original
numbering, window), because the stock config has no place for provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speechprune.portable import make_feature_extractor_portable, make_pruned_portable
from speechprune.portable.modeling_speechprune_pruned import STRUCTURE_KEY
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
        if getattr(encoder.config, STRUCTURE_KEY, None):  # not a stock shape: the folder carries its modeling code
            make_pruned_portable(tmp)
        save_feature_extractor(encoder.feature_extractor, tmp, encoder.family,
                               getattr(encoder, "window_positions", None))
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


def save_feature_extractor(fe: Any, folder: str | Path, family: str, window_positions: int | None = None) -> None:
    """Save the input preparation beside a model. Whisper: fitted to the model's window first (see
    :func:`speechprune.models.whisper_window.window_feature_extractor`), so plain ``pipeline("audio-classification")``
    and ``AutoFeatureExtractor`` prepare exactly what the model expects."""
    if family == "whisper" and window_positions:
        from speechprune.models.whisper_window import window_feature_extractor

        fe = window_feature_extractor(fe, window_positions)
    if fe is None:
        return
    fe.save_pretrained(folder)
    if type(fe).__name__ == "WindowedWhisperFeatureExtractor":
        make_feature_extractor_portable(folder)


def load_feature_extractor(source: str | Path) -> Any | None:
    """The saved feature extractor of a model folder or hub id, or ``None``; never runs a folder's custom code
    (a non-whole-second Whisper window's extractor is built from speechprune's own copy of its class)."""
    import json

    import transformers

    cfg = Path(source) / "preprocessor_config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("feature_extractor_type") == "WindowedWhisperFeatureExtractor":
        from speechprune.portable.feature_extraction_speechprune_whisper import WindowedWhisperFeatureExtractor

        return WindowedWhisperFeatureExtractor.from_pretrained(source)
    try:
        return transformers.AutoFeatureExtractor.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError):
        return None
