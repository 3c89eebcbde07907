"""xlabel (.lablaut) parsing, clipping to the clip's duration, and finding/attaching segment files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.segments import (
    PAUSE_LABELS,
    LabelledSegment,
    attach_segments,
    clip_segments,
    find_segment_file,
    read_lablaut,
)
from speechprune.data.sources import load_audiofolder
from speechprune.data.types import AudioItem, Segment
from speechprune.errors import DataError

HEADER = "signal x\ntype 0\ncomment created using xlabel\nfont f\nseparator ;\nnfields 1\n#\n"
BODY = (
    "    0.080000   -1 _t\n"
    "    0.120000   -1 !t\t+asp\n"
    "    0.250000   -1 a\t\t2\n"
    "    0.300000   -1 \t+hoe\n"  # marker line: no phone
    "    0.400000   -1 t\n"
    "    0.450000   -1 s +sth\n"  # space-separated modifier
    "    0.460000   -1 -sth\n"  # space-separated marker
    "    0.700000   -1 (\n"
    "    1.500000   -1 m\t+sil,+beh\t1\n"
    "    2.600000   -1 .\n"
)


def _write(tmp_path: Path, name: str, body: str = BODY) -> Path:
    p = tmp_path / name
    p.write_text(HEADER + body, encoding="latin-1")
    return p


def test_read_lablaut_segments_tile_the_clip(tmp_path: Path) -> None:
    segs = read_lablaut(_write(tmp_path, "a.lablaut"))
    assert [s.label for s in segs] == ["_t", "!t", "a", "t", "s", "(", "m", "."]
    assert segs[0].start == 0.0
    assert all(a.end == b.start for a, b in zip(segs, segs[1:]))
    t = segs[3]  # the marker at 0.30 belongs to the following phone, which starts at the previous phone's end
    assert (t.start, t.end, t.modifiers) == (0.25, 0.40, ("+hoe",))
    assert segs[1].modifiers == ("+asp",) and segs[1].raw == "!t\t+asp"
    assert segs[2].stress == "2"
    assert segs[4].modifiers == ("+sth",) and segs[5].modifiers == ("-sth",)
    m = segs[6]
    assert (m.label, m.modifiers, m.stress) == ("m", ("+sil", "+beh"), "1")
    assert all(isinstance(s, Segment) and isinstance(s, LabelledSegment) for s in segs)


def test_drop_pause_labels(tmp_path: Path) -> None:
    segs = read_lablaut(_write(tmp_path, "a.lablaut"), drop_labels=PAUSE_LABELS)
    assert [s.label for s in segs] == ["_t", "!t", "a", "t", "s", "m"]
    assert segs[-1].start == 0.70  # the dropped pause's time belongs to no segment


def test_clip_segments_to_duration(tmp_path: Path) -> None:
    segs = read_lablaut(_write(tmp_path, "a.lablaut"))
    clipped = clip_segments(segs, 1.0)
    assert [s.label for s in clipped] == ["_t", "!t", "a", "t", "s", "(", "m"]
    assert clipped[-1].end == 1.0 and clipped[-1].start == 0.7
    assert clipped[-1].modifiers == ("+sil", "+beh")  # clipping keeps the extra fields
    assert clip_segments(segs, 0.7)[-1].label == "("  # a segment starting exactly at the end is dropped
    with pytest.raises(DataError):
        clip_segments(segs, 0.0)


def test_malformed_label_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nohash\.lablaut.*'#'"):
        read_lablaut(_write_raw(tmp_path / "nohash.lablaut", "signal x\n 0.1 -1 a\n"))
    with pytest.raises(DataError, match=r"back\.lablaut:9: end time 0.1 is before"):
        read_lablaut(_write(tmp_path, "back.lablaut", " 0.5 -1 a\n 0.1 -1 b\n"))
    with pytest.raises(DataError, match=r"nan\.lablaut:8: end time 'x1' is not a number"):
        read_lablaut(_write(tmp_path, "nan.lablaut", " x1 -1 a\n"))
    with pytest.raises(DataError, match=r"absent\.lablaut"):
        read_lablaut(tmp_path / "absent.lablaut")
    assert read_lablaut(_write(tmp_path, "empty.lablaut", "")) == []


def _write_raw(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_find_segment_file_emodb_naming(tmp_path: Path) -> None:
    _write(tmp_path, "03a01Faxx.lablaut")
    _write(tmp_path, "14b09Ea.lablaut", "")  # header only, beside a labelled xx file (as in EmoDB)
    _write(tmp_path, "14b09Eaxx.lablaut")
    _write(tmp_path, "09a01Wa.lablaut")
    _write(tmp_path, "09a01Waxx.lablaut")
    assert find_segment_file(tmp_path, "03a01Fa").name == "03a01Faxx.lablaut"
    assert find_segment_file(tmp_path, "14b09Ea").name == "14b09Eaxx.lablaut"
    assert find_segment_file(tmp_path, "09a01Wa").name == "09a01Wa.lablaut"  # exact name wins
    assert find_segment_file(tmp_path, "99z99Zz") is None
    _write(tmp_path, "05a01Fayy.lablaut")
    _write(tmp_path, "05a01Faxx.lablaut")
    with pytest.raises(DataError, match="ambiguous"):
        find_segment_file(tmp_path, "05a01Fa")


def test_attach_segments_missing_file_error_or_skip(tmp_path: Path) -> None:
    af = tmp_path / "af"
    (af / "wav").mkdir(parents=True)
    (af / "lab").mkdir()
    for stem in ("c1", "c2"):
        sf.write(af / "wav" / f"{stem}.wav", np.full(16000, 0.1, np.float32), 16000)  # 1.0 s
    (af / "metadata.csv").write_text("file_name,word\nwav/c1.wav,a\nwav/c2.wav,b\n")
    _write(af / "lab", "c1xx.lablaut")
    with pytest.raises(DataError, match=r"c2\.lablaut") as ei:
        load_audiofolder(af, segments_dir="lab")
    assert "missing='skip'" in str(ei.value)
    ds = load_audiofolder(af, segments_dir="lab", missing_segments="skip")
    assert ds.items[1].segments is None
    assert ds.items[0].segments[-1].end == 1.0  # clipped to the real 1.0 s of audio
    ds2 = load_audiofolder(af, segments_dir="lab", missing_segments="skip", clip_segments=False)
    assert ds2.items[0].segments[-1].end == 2.6
    with pytest.raises(DataError, match="segments folder not found"):
        attach_segments([AudioItem(key="x")], tmp_path / "nope")


def test_tab_before_a_phone_and_bracketed_modifiers(tmp_path: Path) -> None:
    # seen in EmoDB: "125 \ttasp" (a phone after a tab, colour 125) and "a\t+lar,[+flu"
    body = "    0.1  125 !t\n    0.2  125 \ttasp\n    0.3  125 a\t+lar,[+flu\n    0.4  125 \t-flu]\n    0.5 125 n\n"
    segs = read_lablaut(_write(tmp_path, "b.lablaut", body))
    assert [s.label for s in segs] == ["!t", "tasp", "a", "n"]
    assert segs[2].modifiers == ("+lar", "+flu") and segs[3].modifiers == ("-flu",)
    assert (segs[3].start, segs[3].end) == (0.3, 0.5)
