"""Loading labelled audio from an ``audiofolder``, a CSV/JSONL manifest, or a Hugging Face ``datasets.Dataset``.

Every loader returns an :class:`AudioDataset` whose audio is decoded lazily by :mod:`speechprune.data.audio`, so
the same analysis code runs on any source. Conventions shared by all loaders, and why:

* Labels are strings (a speaker ``3`` in a CSV and ``3`` in JSONL must be the same class), and item order is
  the source's row order (results stay aligned with the user's own tables).
* ``label_columns`` defaults to every column except the audio one. Every metadata column is kept in
  ``item.labels`` (so e.g. a ``split`` column is available to :func:`speechprune.data.splits.split_by_column`
  even when it is not a label column); ``label_columns`` names the ones used as labels.
* A column that is asked for and absent is a :class:`DataError` naming it and listing what exists; an empty
  value in an explicitly requested label or group column is an error too (it would silently become a class).
* Audio files are checked for existence at load time, so a typo fails in a second, not an hour into
  extraction.

Hugging Face ``datasets`` >= 4 decodes audio through torchcodec, which is not always installable; the
``Audio`` column is therefore cast to ``Audio(decode=False)`` and decoded here with soundfile (and resampled with
soxr), so no torchcodec or ffmpeg is needed. A ``save_to_disk`` folder (a ``Dataset``, or a ``DatasetDict`` with
``FOLDER:SPLIT``) is read with ``datasets.load_from_disk`` for the same reason.

Why one module of over 400 lines: every loader applies the conventions above through the same helpers
(``_resolve_columns``, ``_make_items``, ``_label_str``); splitting the loaders apart would move those rules to a
third module that each part imports, without making any loader simpler to read.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from speechprune.data.labels import clean_label, warn_near_duplicates
from speechprune.data.paths import inside
from speechprune.data.types import TARGET_SAMPLING_RATE, AudioDataset, AudioItem
from speechprune.errors import DataError
from speechprune.utils.io import atomic_dir

__all__ = [
    "load_audiofolder",
    "load_manifest",
    "from_hf_dataset",
    "load_data",
    "load_saved_dataset",
    "is_saved_dataset",
    "write_audiofolder",
    "METADATA_FILE",
]

METADATA_FILE = "metadata.csv"
_FILE_COLUMN = "file_name"
_MANIFEST_AUDIO_COLUMNS = ("path", "audio", "file_name")


# --------------------------------------------------------------------------------------------------- helpers


def _label_str(value: Any) -> str:
    """Labels are strings; integral floats (``3.0`` from a numeric JSON column) become ``"3"``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (np.integer, np.floating)):
        return str(value.item())
    return clean_label(str(value))


def _resolve_columns(
    source: str,
    available: Sequence[str],
    audio_column: str,
    label_columns: Sequence[str] | None,
    group_column: str | None,
) -> tuple[list[str], bool]:
    """Validate the requested columns against ``available``; return (label columns, explicitly requested?)."""
    avail = list(available)
    if audio_column not in avail:
        raise DataError(f"{source}: no audio column {audio_column!r}; available columns: {', '.join(avail)}")
    if isinstance(label_columns, str):
        label_columns = [label_columns]
    explicit = label_columns is not None
    labels = list(label_columns) if label_columns is not None else [c for c in avail if c != audio_column]
    for col in [*labels, *([group_column] if group_column else [])]:
        if col not in avail:
            raise DataError(f"{source}: no column {col!r}; available columns: {', '.join(avail)}")
        if col == audio_column:
            raise DataError(f"{source}: column {col!r} is the audio column and cannot be a label or group")
    if len(set(labels)) != len(labels):
        raise DataError(f"{source}: duplicate label columns in {labels}")
    return labels, explicit


def _make_items(
    source: str,
    rows: Sequence[Mapping[str, Any]],
    audio_column: str,
    labels: Sequence[str],
    explicit: bool,
    group_column: str | None,
    resolve: Any,
) -> list[AudioItem]:
    """Build items from row dicts; ``resolve(row_value) -> (key, path)`` locates each row's audio."""
    items: list[AudioItem] = []
    seen: dict[str, int] = {}
    missing: list[str] = []
    for i, row in enumerate(rows):
        raw_audio = row.get(audio_column)
        if raw_audio is None or str(raw_audio).strip() == "":
            raise DataError(f"{source}: row {i + 1} has an empty {audio_column!r} value")
        key, path = resolve(str(raw_audio).strip())
        if key in seen:
            raise DataError(f"{source}: audio {key!r} is listed twice (rows {seen[key] + 1} and {i + 1})")
        seen[key] = i
        if not path.is_file():
            missing.append(str(path))
        lab = {c: _label_str(v) for c, v in row.items() if c != audio_column and c is not None}
        for c in [*(labels if explicit else []), *([group_column] if group_column else [])]:
            if lab.get(c, "") == "":
                raise DataError(f"{source}: row {i + 1} ({key}) has an empty value in column {c!r}")
        items.append(AudioItem(key=key, labels=lab, group=lab[group_column] if group_column else None, path=path))
    for col in dict.fromkeys([*labels, *([group_column] if group_column else [])]):
        warn_near_duplicates(source, col, (it.labels.get(col, "") for it in items))
    if missing:
        shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        raise DataError(f"{source}: {len(missing)} audio file(s) not found: {shown}")
    return items


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = list(reader.fieldnames or [])
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from exc
    if not fields:
        raise DataError(f"{path}: empty CSV (no header row)")
    for i, r in enumerate(rows):
        if None in r or any(v is None for v in r.values()):
            raise DataError(f"{path}: row {i + 2} has a different number of fields than the header")
    return fields, rows


def _read_jsonl(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    fields: dict[str, None] = {}
    with path.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append(obj)
            fields.update(dict.fromkeys(obj))
    return list(fields), rows


# ------------------------------------------------------------------------------------------------- loaders


def load_audiofolder(
    folder: str | os.PathLike[str],
    label_columns: Sequence[str] | None = None,
    group_column: str | None = None,
    segments_dir: str | os.PathLike[str] | None = None,
    segments_ext: str = ".lablaut",
    missing_segments: Literal["error", "skip"] = "error",
    clip_segments: bool = True,
    name: str | None = None,
) -> AudioDataset:
    """Load a Hugging Face style ``audiofolder``: audio files plus ``metadata.csv`` (or ``metadata.jsonl``).

    ``file_name`` holds each file's path relative to the folder and becomes the item key. ``segments_dir``
    (relative to the folder, or absolute) attaches time-stamped segments (see
    :func:`speechprune.data.segments.attach_segments`), clipped to each clip's real duration unless
    ``clip_segments`` is false.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"audio folder not found: {root}")
    meta_csv, meta_jsonl = root / METADATA_FILE, root / "metadata.jsonl"
    if meta_csv.is_file():
        meta = meta_csv
        fields, rows = _read_csv(meta)
    elif meta_jsonl.is_file():
        meta = meta_jsonl
        fields, rows = _read_jsonl(meta)
    else:
        raise DataError(
            f"{root} is not an audiofolder: no {METADATA_FILE} (or metadata.jsonl) with a {_FILE_COLUMN!r} column"
        )
    source = str(meta)
    labels, explicit = _resolve_columns(source, fields, _FILE_COLUMN, label_columns, group_column)
    resolved_root = root.resolve()

    def resolve(rel: str) -> tuple[str, Path]:
        return rel, inside(resolved_root, rel, source=source, column=_FILE_COLUMN)

    items = _make_items(source, rows, _FILE_COLUMN, labels, explicit, group_column, resolve)
    if segments_dir is not None:
        from speechprune.data.segments import attach_segments

        sdir = Path(segments_dir)
        attach_segments(
            items,
            sdir if sdir.is_absolute() else root / sdir,
            ext=segments_ext,
            missing=missing_segments,
            clip=clip_segments,
        )
    return AudioDataset(items, labels, group_column, name or root.name)


def load_manifest(
    path: str | os.PathLike[str],
    audio_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    group_column: str | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> AudioDataset:
    """Load a ``.csv`` or ``.jsonl`` manifest: one row per clip, ``audio_column`` holding its path.

    ``audio_column`` defaults to the first of ``path``, ``audio``, ``file_name`` that the manifest has.
    Relative paths resolve against ``base_dir``, by default the manifest's own folder (so a manifest and its
    audio can be moved together). The item key is the path as written in the manifest.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"manifest not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        fields, rows = _read_csv(p)
    elif suffix in (".jsonl", ".ndjson"):
        fields, rows = _read_jsonl(p)
    else:
        raise DataError(f"{p}: unsupported manifest type {suffix!r} (expected .csv or .jsonl)")
    if not rows:
        raise DataError(f"{p}: manifest has no rows")
    source = str(p)
    if audio_column is None:
        audio_column = next((c for c in _MANIFEST_AUDIO_COLUMNS if c in fields), _MANIFEST_AUDIO_COLUMNS[0])
    labels, explicit = _resolve_columns(source, fields, audio_column, label_columns, group_column)
    for i, r in enumerate(rows):
        for c in [audio_column, *labels, *([group_column] if group_column else [])]:
            if c not in r:
                raise DataError(f"{source}: row {i + 1} has no {c!r} field")
    base = (Path(base_dir) if base_dir is not None else p.parent).resolve()

    def resolve(audio: str) -> tuple[str, Path]:
        ap = Path(audio).expanduser()
        return audio, ap if ap.is_absolute() else base / ap

    items = _make_items(source, rows, audio_column, labels, explicit, group_column, resolve)
    return AudioDataset(items, labels, group_column, name or p.stem)


def from_hf_dataset(
    ds: Any,
    audio_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    group_column: str | None = None,
    name: str | None = None,
    split: str | None = None,
) -> AudioDataset:
    """Wrap a ``datasets.Dataset`` whose ``audio_column`` is an ``Audio`` feature (or paths, or arrays).

    Rows whose audio is a local file stay lazy (the item keeps the path); rows that carry encoded bytes (e.g.
    from Parquet on the Hub) are decoded now, with soundfile, to 16 kHz mono float32 kept in memory (4 bytes
    per sample: about 230 MB per hour). ``ClassLabel`` columns map to their names; keys are row indices.
    A ``DatasetDict`` needs ``split`` (the one split is taken when it has only one). ``audio_column`` defaults
    to ``audio``.
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError("the 'datasets' package is needed to load a Hugging Face dataset") from exc
    ds = _pick_split(ds, split, name or "dataset")
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"expected a datasets.Dataset, got {type(ds).__name__}")
    audio_column = audio_column or "audio"
    source = name or (ds.info.dataset_name if ds.info and ds.info.dataset_name else "hf_dataset")
    labels, explicit = _resolve_columns(source, ds.column_names, audio_column, label_columns, group_column)
    feature = ds.features[audio_column]
    if isinstance(feature, datasets.Audio):
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    meta_cols = [c for c in ds.column_names if c != audio_column]
    columns: dict[str, list[str]] = {}
    for c in meta_cols:
        f = ds.features[c]
        values = list(ds[c])
        if isinstance(f, datasets.ClassLabel):
            columns[c] = ["" if v is None or v < 0 else f.int2str(int(v)) for v in values]
        elif isinstance(f, datasets.Value):
            columns[c] = [_label_str(v) for v in values]
        elif c in labels or c == group_column:
            raise DataError(f"{source}: column {c!r} has feature type {type(f).__name__}; labels must be scalars")
        # other non-scalar metadata columns (lists, nested dicts) are not kept as labels
    items: list[AudioItem] = []
    for i, audio in enumerate(ds[audio_column]):
        lab = {c: v[i] for c, v in columns.items()}
        for c in [*(labels if explicit else []), *([group_column] if group_column else [])]:
            if lab.get(c, "") == "":
                raise DataError(f"{source}: row {i} has an empty value in column {c!r}")
        it = AudioItem(key=str(i), labels=lab, group=lab[group_column] if group_column else None)
        _fill_hf_audio(it, audio, source, i)
        items.append(it)
    for col in dict.fromkeys([*labels, *([group_column] if group_column else [])]):
        warn_near_duplicates(source, col, (it.labels.get(col, "") for it in items))
    return AudioDataset(items, labels, group_column, source)


def _pick_split(ds: Any, split: str | None, source: str) -> Any:
    """One split of a ``DatasetDict`` (``split`` names it; a one-split dict needs no name); a ``Dataset`` as is."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) == 1:
                return next(iter(ds.values()))
            raise DataError(
                f"{source} is a DatasetDict with splits {list(ds)}; name one, e.g. {source}:{next(iter(ds))} "
                f"(Python: ds[{next(iter(ds))!r}])"
            )
        if split not in ds:
            raise DataError(f"{source} has no split {split!r}; splits: {', '.join(ds)}")
        return ds[split]
    if split is not None:
        raise DataError(f"{source} is a single Dataset, not a DatasetDict: it has no split {split!r}")
    return ds


def is_saved_dataset(folder: str | os.PathLike[str]) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    p = Path(folder)
    return (p / "dataset_dict.json").is_file() or ((p / "state.json").is_file() and (p / "dataset_info.json").is_file())


def load_saved_dataset(
    folder: str | os.PathLike[str],
    split: str | None = None,
    label_columns: Sequence[str] | None = None,
    group_column: str | None = None,
    audio_column: str | None = None,
    name: str | None = None,
) -> AudioDataset:
    """Load a ``save_to_disk`` folder (``split`` picks one split of a ``DatasetDict``) with ``load_from_disk``."""
    import datasets

    p = Path(folder)
    try:
        loaded = datasets.load_from_disk(str(p))
    except Exception as exc:  # corrupt arrow files, version mismatch: reported with the folder
        raise DataError(f"{p}: cannot read this save_to_disk folder with datasets.load_from_disk: {exc}") from exc
    return from_hf_dataset(loaded, audio_column=audio_column, label_columns=label_columns,
                           group_column=group_column, name=name or p.name, split=split)


def split_suffix(spec: str) -> tuple[str, str | None]:
    """``FOLDER:SPLIT`` -> (FOLDER, SPLIT) when FOLDER is a saved dataset and the whole string is not a path."""
    if ":" in spec and not Path(spec).exists():
        head, _, tail = spec.rpartition(":")
        if head and tail and Path(head).is_dir():
            return head, tail
    return spec, None


def _fill_hf_audio(item: AudioItem, audio: Any, source: str, index: int) -> None:
    from speechprune.data.audio import pcm_to_float, to_mono_16k, validate_audio
    from speechprune.errors import AudioError

    where = f"{source}: row {index}"
    if isinstance(audio, (str, os.PathLike)):
        audio = {"path": str(audio), "bytes": None}
    if not isinstance(audio, Mapping):
        raise DataError(f"{where}: unsupported audio value of type {type(audio).__name__}")
    if audio.get("array") is not None:
        sr = audio.get("sampling_rate")
        if not sr:
            raise DataError(f"{where}: in-memory audio array has no sampling_rate")
        item.array, item.sampling_rate = np.asarray(audio["array"]), int(sr)
        return
    data, path = audio.get("bytes"), audio.get("path")
    if data:
        import soundfile as sf

        label = f"{where} ({path or 'embedded bytes'})"
        try:
            samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
        except Exception as exc:  # soundfile raises several exception types for corrupt data
            raise AudioError(f"{label}: cannot decode embedded audio bytes: {exc}") from exc
        validate_audio(pcm_to_float(samples, label), label)
        item.array = to_mono_16k(samples, int(sr), label)
        item.sampling_rate = TARGET_SAMPLING_RATE
        return
    if path:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{where}: audio file not found: {p}")
        item.path = p
        return
    raise DataError(f"{where}: audio has neither bytes, a path nor an array")


_SPLIT_NAME = re.compile(r"^(train|test|validation|valid|dev|eval)(\[.*\])?$")


def load_data(
    spec: Any,
    label_columns: Sequence[str] | None = None,
    group_column: str | None = None,
    audio_column: str | None = None,
    split: str | None = None,
    **kw: Any,
) -> AudioDataset:
    """Load any supported source, chosen from ``spec``:

    * a folder with ``metadata.csv``/``metadata.jsonl`` -> :func:`load_audiofolder`;
    * a ``save_to_disk`` folder -> :func:`load_saved_dataset`; ``FOLDER:SPLIT`` (or ``split=``) picks one split
      of a saved ``DatasetDict``;
    * a ``.csv`` / ``.jsonl`` file -> :func:`load_manifest`;
    * a ``datasets.Dataset`` (or ``DatasetDict`` with ``split=``) -> :func:`from_hf_dataset`;
    * ``"hf:NAME[:CONFIG][:SPLIT]"`` -> ``datasets.load_dataset`` (needs the Hub), then :func:`from_hf_dataset`.
      With two fields, the second is read as a split if it looks like one (``train``, ``test[:10%]``, ...),
      otherwise as a config; ``hf:NAME::SPLIT`` is always unambiguous. ``hf:`` followed by a local
      ``save_to_disk`` folder loads that folder.

    ``audio_column`` names the column holding the audio: default ``audio`` for datasets, and for manifests the
    first of ``path``, ``audio``, ``file_name`` that exists; an audiofolder always uses ``file_name``.
    Extra keyword arguments go to the chosen loader.
    """
    if isinstance(spec, AudioDataset):
        return spec
    try:
        import datasets

        if isinstance(spec, (datasets.Dataset, datasets.DatasetDict)):
            return from_hf_dataset(spec, audio_column=audio_column, label_columns=label_columns,
                                   group_column=group_column, split=split, **kw)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(spec, str) and spec.startswith("hf:"):
        local, local_split = split_suffix(spec[3:])
        if Path(local).is_dir() and is_saved_dataset(local):
            return load_saved_dataset(local, split or local_split, label_columns, group_column, audio_column,
                                      kw.get("name"))
        return _load_hf_spec(spec, label_columns, group_column, audio_column=audio_column, **kw)
    if isinstance(spec, (str, os.PathLike)):
        text, suffix_split = split_suffix(str(spec))
        p = Path(text)
        if p.is_dir() and is_saved_dataset(p):
            return load_saved_dataset(p, split or suffix_split, label_columns, group_column, audio_column,
                                      kw.get("name"))
        if suffix_split is not None or split is not None:
            raise DataError(f"{spec}: a split ({split or suffix_split!r}) can only be taken from a save_to_disk "
                            f"DatasetDict folder or a datasets.DatasetDict")
        if p.is_dir():
            if audio_column not in (None, _FILE_COLUMN):
                raise DataError(f"{p}: an audiofolder's audio column is always {_FILE_COLUMN!r} "
                                f"(got --audio-column {audio_column!r})")
            return load_audiofolder(p, label_columns=label_columns, group_column=group_column, **kw)
        if p.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
            if audio_column is not None:
                kw["audio_column"] = audio_column
            return load_manifest(p, label_columns=label_columns, group_column=group_column, **kw)
        if not p.exists():
            raise DataError(f"data source not found: {p}")
        raise DataError(f"{p}: not a data source (expected an audiofolder, a save_to_disk folder, a .csv/.jsonl "
                        f"manifest or hf:NAME)")
    raise DataError(f"cannot load data from a {type(spec).__name__}")


def load_dataset_spec(
    data: Any, labels: Sequence[str] | None, group: str | None, segments_dir: str | os.PathLike[str] | None = None,
    audio_column: str | None = None,
) -> AudioDataset:
    """:func:`load_data` as the commands and ``run`` call it: label columns (none = all), a group column, the
    segments folder of time-stamped data, if any, and the audio column (audiofolder, CSV/JSONL manifest,
    ``save_to_disk`` folder with optional ``:SPLIT``, or ``hf:NAME[:CONFIG][:SPLIT]``)."""
    kwargs: dict[str, Any] = {}
    if segments_dir:
        kwargs["segments_dir"] = Path(segments_dir)
    return load_data(data, label_columns=list(labels) if labels else None, group_column=group,
                     audio_column=audio_column, **kwargs)


def _load_hf_spec(spec: str, label_columns: Sequence[str] | None, group_column: str | None,
                  audio_column: str | None = None, **kw: Any) -> AudioDataset:
    import datasets

    parts = re.split(r":(?![^\[]*\])", spec[3:])  # split on ':' outside a slice such as train[:10%]
    if not parts[0] or len(parts) > 3:
        raise DataError(f"bad Hugging Face spec {spec!r}; expected hf:NAME[:CONFIG][:SPLIT]")
    name, config, split = parts[0], None, None
    if len(parts) == 2:
        if _SPLIT_NAME.match(parts[1]):
            split = parts[1]
        else:
            config = parts[1] or None
    elif len(parts) == 3:
        config, split = parts[1] or None, parts[2] or None
    try:
        loaded = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # network, missing dataset, missing config: all reported with the spec
        raise DataError(f"cannot load {spec!r} with datasets.load_dataset: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise DataError(f"{spec!r} has splits {list(loaded)}; name one, e.g. {spec}:{next(iter(loaded))}")
        loaded = next(iter(loaded.values()))
    kw.setdefault("name", spec[3:])
    return from_hf_dataset(loaded, audio_column=audio_column, label_columns=label_columns,
                           group_column=group_column, **kw)


# ------------------------------------------------------------------------------------------------- writing


def _safe_stem(key: str) -> str:
    stem = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", key)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "clip"


def write_audiofolder(ds: AudioDataset, folder: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``ds`` as an audiofolder: ``wav/<key>.wav`` (16 kHz, 16-bit PCM mono) plus ``metadata.csv``.

    The columns are ``file_name``, the label columns, then any other label keys that every item has (e.g.
    ``take``), so every loader (ours, ``datasets``' ``audiofolder``, a spreadsheet) can read it back. The
    folder is written beside the destination and renamed into place, so it is either absent or complete;
    an existing folder is an error unless ``overwrite``. Segments are not written.
    """
    import soundfile as sf

    dest = Path(folder)
    if dest.exists() and not overwrite:
        raise DataError(f"{dest} already exists; pass overwrite=True to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    extra = [k for k in (ds.items[0].labels if ds.items else {}) if k not in ds.label_columns]
    extra = [k for k in extra if k != _FILE_COLUMN and all(k in it.labels for it in ds.items)]
    columns = [_FILE_COLUMN, *ds.label_columns, *extra]
    with atomic_dir(dest) as tmp:
        (tmp / "wav").mkdir()
        used: set[str] = set()
        rows = []
        for i, it in enumerate(ds.items):
            stem = _safe_stem(it.key)
            if stem in used:
                stem = f"{stem}_{i}"
            used.add(stem)
            rel = f"wav/{stem}.wav"
            sf.write(str(tmp / rel), ds.load_audio(i), TARGET_SAMPLING_RATE, subtype="PCM_16")
            rows.append({_FILE_COLUMN: rel, **{c: it.labels[c] for c in columns[1:]}})
        with (tmp / METADATA_FILE).open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
    return dest
