"""Helpers shared by subcommands: parsing layer lists; the console and the data loader the commands use
(defined in :mod:`speechprune.utils.console` and :mod:`speechprune.data.sources`)."""

from __future__ import annotations

from speechprune.data.sources import load_dataset_spec
from speechprune.errors import SpeechpruneError
from speechprune.utils.console import console

__all__ = ["AUDIO_COLUMN_HELP", "DATA_HELP", "REPORT_TO_HELP", "console", "load_dataset_spec", "parse_states"]


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


DATA_HELP = ("An audiofolder (folder with metadata.csv), a CSV/JSONL manifest, a datasets save_to_disk folder "
             "(FOLDER:SPLIT for a DatasetDict), or 'hf:NAME[:CONFIG][:SPLIT]'.")
AUDIO_COLUMN_HELP = ("Column holding the audio (datasets: default 'audio'; manifests: default the first of path, "
                     "audio, file_name). Like the 'audio_column_name' of transformers' example scripts.")
REPORT_TO_HELP = ("Experiment tracker for the training curves: none | tensorboard | wandb, written under OUT/logs "
                  "(transformers: report_to).")
