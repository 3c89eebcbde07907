"""Time-stamped segment labels (phones, syllables) read from xlabel files such as EmoDB's ``.lablaut``.

Segment labels let an analysis ask frame-level questions ("which layers encode the phone?") instead of only
clip-level ones. The EmoDB copy in ``shared/data`` was cut or padded to 2.0 s per clip while its label files
describe the full recordings, so segments must be clipped to the audio that actually exists, or frame labels
would point past the end of the features.

xlabel format, as written by the ESPS ``xlabel`` tool: header lines, a line holding only ``#``, then one line
per boundary ``<end_time> <colour> <label fields>``. Each line *ends* a segment; it starts where the previous
line ended (0 for the first). In EmoDB the label fields are tab-separated: the phone (SAMPA with EmoDB's
diacritics, e.g. ``!t`` closure, ``tasp`` aspiration, ``?`` glottal stop), optional comma-separated
modifiers (``+sth``, ``-lar``, ...) and an optional stress digit; a few lines use spaces instead of tabs.

What :func:`read_lablaut` does with the oddities, and why:

* Modifier-only lines (no phone, e.g. ``\\t+hoe`` or `` -sth``) are *markers*: they record the
  point where a phonation property starts or stops, usually inside the following phone. They are not
  phones, so they produce no segment; the following phone starts at the previous *phone's* end (segments
  keep tiling the clip without gaps) and the marker's modifiers are attached to it.
* The ``label`` of a segment is the base phone; the modifiers and stress digit are kept in
  :attr:`LabelledSegment.modifiers` / :attr:`LabelledSegment.stress`, and the untouched text in
  :attr:`LabelledSegment.raw`.
* Pause-like labels (``(``, ``(gef``, and ``.`` which always ends an EmoDB file) are **kept** by default:
  the EmoDB labelling conventions are not shipped with the data, so they are not *clearly* silence. Pass
  ``drop_labels=PAUSE_LABELS`` to remove them (their time then belongs to no segment).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from speechprune.data.types import AudioItem, Segment
from speechprune.errors import DataError

__all__ = [
    "LabelledSegment",
    "PAUSE_LABELS",
    "read_lablaut",
    "clip_segments",
    "find_segment_file",
    "attach_segments",
]

#: Labels in EmoDB ``.lablaut`` files that look like pauses or the utterance end (not dropped by default).
PAUSE_LABELS: frozenset[str] = frozenset({"(", "(gef", "."})

_STRESS = re.compile(r"^[0-9]$")
_LINE = re.compile(r"^\s*(\S+)\s+(\S+)(?:[ \t](.*))?$")


@dataclass(frozen=True)
class LabelledSegment(Segment):
    """A :class:`Segment` that also keeps what the label file said beyond the base label.

    ``raw`` is the label text as written (phone, modifiers, stress); ``modifiers`` the ``+x``/``-x`` tokens
    (including those of modifier-only marker lines folded into this segment); ``stress`` the stress digit.
    It is still a :class:`Segment` (``start``, ``end``, ``label``), so every consumer of segments accepts it.
    """

    raw: str = ""
    modifiers: tuple[str, ...] = ()
    stress: str | None = None


def _split_fields(text: str) -> tuple[str, list[str], str | None]:
    """Split the label text of one line into (base label, modifiers, stress digit).

    Fields are tab-separated in EmoDB, but some lines use spaces (``s +sth``) or glue a modifier onto the phone
    (``d+nas``), so the split is on any whitespace and on the first ``+``/``-`` after a phone character.
    """
    if not text.strip():
        return "", [], None
    tokens = text.split()
    # A first token in modifier syntax means "no phone, only modifiers" (a marker line). The leading tab
    # that usually marks these is not used: one EmoDB line has a tab before a phone ("\ttasp").
    marker = tokens[0][:1] in ("+", "-", "[")
    base = ""
    if not marker and tokens:
        first = tokens.pop(0)
        m = re.match(r"^([^+\-\[]+)([+\-\[].*)?$", first)
        if m:
            base = m.group(1)
            if m.group(2):
                tokens.insert(0, m.group(2))
        else:
            base = first
    modifiers: list[str] = []
    stress: str | None = None
    for tok in tokens:
        if _STRESS.match(tok):
            stress = tok
            continue
        modifiers.extend(t.strip("[]") for t in re.split(r"[,\s]+", tok) if t.strip("[]"))
    return base, modifiers, stress


def read_lablaut(
    path: str | os.PathLike[str],
    drop_labels: Collection[str] = (),
) -> list[LabelledSegment]:
    """Read an xlabel (``.lablaut``) file into segments, in file order (see the module docstring).

    ``drop_labels`` removes segments whose base label is listed (e.g. :data:`PAUSE_LABELS`). Raises
    :class:`DataError` naming the file (and line) for a missing file, a missing ``#`` separator, a non-numeric
    time or times that go backwards. A file with a header but no label lines gives an empty list.
    """
    p = Path(path)
    try:
        text = p.read_bytes().decode("latin-1")  # xlabel predates UTF-8; latin-1 never fails to decode
    except FileNotFoundError:
        raise DataError(f"segment file not found: {p}") from None
    except OSError as exc:
        raise DataError(f"cannot read segment file {p}: {exc}") from exc
    lines = text.splitlines()
    try:
        body_start = next(i for i, ln in enumerate(lines) if ln.strip() == "#") + 1
    except StopIteration:
        raise DataError(f"{p}: not an xlabel file (no '#' line separating the header from the labels)") from None

    segments: list[LabelledSegment] = []
    prev_end = 0.0  # end of the previous line of any kind (times must not go backwards)
    seg_start = 0.0  # start of the next phone: end of the previous phone (markers are skipped)
    pending: list[str] = []  # modifiers of marker lines waiting for the next phone
    for lineno, line in enumerate(lines[body_start:], start=body_start + 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise DataError(f"{p}:{lineno}: cannot parse label line {line!r}")
        try:
            end = float(m.group(1))
        except ValueError:
            raise DataError(f"{p}:{lineno}: end time {m.group(1)!r} is not a number") from None
        if end < prev_end - 1e-9:
            raise DataError(f"{p}:{lineno}: end time {end} is before the previous end time {prev_end}")
        prev_end = end
        raw = m.group(3) or ""
        base, modifiers, stress = _split_fields(raw)
        if not base:
            pending.extend(modifiers)
            continue
        if base not in drop_labels:
            segments.append(
                LabelledSegment(
                    start=seg_start,
                    end=end,
                    label=base,
                    raw=raw.strip(),
                    modifiers=tuple(pending + modifiers),
                    stress=stress,
                )
            )
        pending = []
        seg_start = end
    return segments


def clip_segments(segments: Sequence[Segment], duration: float) -> list[Segment]:
    """Cut segments to a clip of ``duration`` seconds.

    Segments that start at or after the end are dropped, a segment that straddles it is shortened (its other
    fields are kept), and zero-length results are dropped: a frame label must never refer to audio that the
    (truncated) clip does not contain.
    """
    if duration <= 0:
        raise DataError(f"cannot clip segments to a non-positive duration ({duration} s)")
    out: list[Segment] = []
    for s in segments:
        if s.start >= duration:
            continue
        end = min(s.end, duration)
        if end <= s.start:
            continue
        if end != s.end:
            s = _replace_end(s, end)
        out.append(s)
    return out


def _replace_end(s: Segment, end: float) -> Segment:
    import dataclasses

    return dataclasses.replace(s, end=end)


def _has_labels(path: Path) -> bool:
    try:
        return bool(read_lablaut(path))
    except DataError:
        return False


def find_segment_file(
    segments_dir: Path, stem: str, ext: str = ".lablaut", listing: Collection[str] | None = None
) -> Path | None:
    """Find the segment file for an audio file stem, or ``None``.

    The exact name ``<stem><ext>`` wins; otherwise a file ``<stem><suffix><ext>`` is accepted, because EmoDB
    names its label files with an extra ``xx`` (``03a01Fa.wav`` -> ``03a01Faxx.lablaut``). When both exist and
    the exact one has no labels (EmoDB ships an empty ``14b09Ea.lablaut`` beside ``14b09Eaxx.lablaut``) the
    labelled one is used. Several suffixed candidates and no exact match is ambiguous: :class:`DataError`.
    ``listing`` (the folder's file names) saves listing the folder once per clip.
    """
    names = listing if listing is not None else [e.name for e in os.scandir(segments_dir) if e.is_file()]
    exact_name = f"{stem}{ext}"
    exact = segments_dir / exact_name
    candidates = sorted(segments_dir / n for n in names if n.startswith(stem) and n.endswith(ext) and n != exact_name)
    if exact_name in names:
        if candidates and not _has_labels(exact):
            labelled = [c for c in candidates if _has_labels(c)]
            if len(labelled) == 1:
                return labelled[0]
        return exact
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise DataError(
            f"ambiguous segment files for {stem!r} in {segments_dir}: {', '.join(c.name for c in candidates)}"
        )
    return None


def attach_segments(
    items: Sequence[AudioItem],
    segments_dir: str | os.PathLike[str],
    ext: str = ".lablaut",
    missing: Literal["error", "skip"] = "error",
    clip: bool = True,
    drop_labels: Collection[str] = (),
    duration_of: Callable[[AudioItem], float] | None = None,
) -> None:
    """Read each item's segment file from ``segments_dir`` and set ``item.segments`` (in place).

    The file is found from the audio file's stem (:func:`find_segment_file`). ``missing="error"`` raises
    :class:`DataError` naming the first missing file(s); ``"skip"`` leaves ``item.segments = None`` for those
    items. With ``clip`` the segments are cut to the clip's real duration (from the audio header, or
    ``duration_of``), which is what makes EmoDB's 2.0 s clips consistent with their full-length labels.
    """
    sdir = Path(segments_dir)
    if not sdir.is_dir():
        raise DataError(f"segments folder not found: {sdir}")
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', not {missing!r}")
    duration_of = duration_of or audio_duration
    listing = {e.name for e in os.scandir(sdir) if e.is_file()}
    missing_names: list[str] = []
    for it in items:
        stem = Path(it.path).stem if it.path is not None else Path(it.key).stem
        f = find_segment_file(sdir, stem, ext, listing)
        if f is None:
            missing_names.append(f"{stem}{ext}")
            it.segments = None
            continue
        segs: list[Segment] = list(read_lablaut(f, drop_labels=drop_labels))
        if clip:
            segs = clip_segments(segs, duration_of(it))
        it.segments = segs
    if missing_names and missing == "error":
        more = len(missing_names) - 5
        shown = ", ".join(missing_names[:5]) + (f" (and {more} more)" if more > 0 else "")
        raise DataError(
            f"{len(missing_names)} segment file(s) missing in {sdir}: {shown}; "
            "pass missing='skip' to load the clips without segments"
        )


def audio_duration(item: AudioItem) -> float:
    """Duration of an item's audio in seconds, from the file header (no decoding) or the in-memory array."""
    if item.path is not None:
        import soundfile as sf

        from speechprune.errors import AudioError

        try:
            info = sf.info(str(item.path))
        except Exception as exc:  # soundfile raises several types for unreadable files
            raise AudioError(f"cannot read audio header of {item.path}: {exc}") from exc
        return info.frames / info.samplerate
    if item.array is not None and item.sampling_rate:
        return len(item.array) / float(item.sampling_rate)
    raise DataError(f"item {item.key!r}: no audio to measure the duration of")
