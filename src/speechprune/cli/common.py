"""Helpers shared by subcommands: parsing layer lists, loading data from a CLI spec, printing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from speechprune.errors import SpeechpruneError

console = Console(stderr=True)


def parse_states(spec: str | None, num_states: int | None = None) -> list[int] | None:
    """Parse ``"all"``, ``"0,3,6"`` or ``"2-5"`` (inclusive) into state indices (``None`` = all)."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            lo, sep, hi = part.partition("-")
            first, last = int(lo), int(hi if sep else lo)
            if min(first, last) < 0:
                raise ValueError(part)
        except ValueError as exc:
            raise SpeechpruneError(f"cannot parse layer list {spec!r}: use e.g. 'all', '0,3,6' or '2-5'") from exc
        if first > last:
            raise SpeechpruneError(f"layer range {part!r} in {spec!r} runs backwards; write it low-high, e.g. "
                                   f"'{last}-{first}'")
        out.extend(range(first, last + 1))
    if num_states is not None:
        bad = [i for i in out if i >= num_states]
        if bad:
            raise SpeechpruneError(f"state(s) {bad} in {spec!r} do not exist: this model has states 0..{num_states - 1}")
    return sorted(set(out))


def load_dataset_spec(
    data: str, labels: list[str] | None, group: str | None, segments_dir: str | None = None,
    audio_column: str | None = None,
) -> Any:
    """Load a dataset from a CLI argument (audiofolder, CSV/JSONL manifest, ``save_to_disk`` folder with optional
    ``:SPLIT``, or ``hf:NAME[:CONFIG][:SPLIT]``)."""
    from speechprune.data.sources import load_data

    kwargs: dict[str, Any] = {}
    if segments_dir:
        kwargs["segments_dir"] = Path(segments_dir)
    return load_data(data, label_columns=labels or None, group_column=group, audio_column=audio_column, **kwargs)


DATA_HELP = ("An audiofolder (folder with metadata.csv), a CSV/JSONL manifest, a datasets save_to_disk folder "
             "(FOLDER:SPLIT for a DatasetDict), or 'hf:NAME[:CONFIG][:SPLIT]'.")
AUDIO_COLUMN_HELP = ("Column holding the audio (datasets: default 'audio'; manifests: default the first of path, "
                     "audio, file_name). Like the 'audio_column_name' of transformers' example scripts.")
