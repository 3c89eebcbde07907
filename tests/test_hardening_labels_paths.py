"""Issue 15: label values are stripped and near-duplicate classes reported; audio paths must stay inside the data
folder (``../`` and symbolic links out of it are refused, as absolute paths are)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

from _hardening import audiofolder, cli


def test_whitespace_is_stripped_and_case_or_number_variants_are_reported(tmp_path: Path) -> None:
    from speechprune.data.labels import LabelWarning
    from speechprune.data.sources import load_data

    data = audiofolder(tmp_path / "d", n=8, labels=["zero ", "ZERO", "0", "0.0", " zero", "one", "1", "one"])
    with pytest.warns(LabelWarning) as rec:
        ds = load_data(str(data), ["word"])
    assert ds.labels("word") == ["zero", "ZERO", "0", "0.0", "zero", "one", "1", "one"]
    msg = str(rec[0].message)
    assert "'word'" in msg and "'ZERO' / 'zero'" in msg and "'0' / '0.0'" in msg and "one" not in msg.split(":", 2)[2]


def test_clean_labels_do_not_warn(tmp_path: Path) -> None:
    from speechprune.data.sources import load_data

    data = audiofolder(tmp_path / "d", n=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_data(str(data), ["word", "speaker"], "speaker")


def test_cli_prints_the_warning_as_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def show(message, category, filename, lineno, file=None, line=None):  # print, as outside pytest
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)
    data = audiofolder(tmp_path / "d", n=4, labels=["a", "A", "a", "A"])
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        res = cli("extract", "tiny:wav2vec2", str(data), "-l", "word", "--cache-dir", str(tmp_path / "c"),
                  "--no-progress")
    assert res.code == 0, res.err
    lines = [line for line in res.err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "'A' / 'a'" in lines[0] and "Traceback" not in res.err


def test_dotdot_and_symlinks_out_of_the_data_folder_are_refused(tmp_path: Path) -> None:
    from speechprune.data.sources import load_data
    from speechprune.errors import DataError

    outside = audiofolder(tmp_path / "outside", n=2)
    data = audiofolder(tmp_path / "d", n=4)
    meta = (data / "metadata.csv").read_text()
    (data / "metadata.csv").write_text(meta + "../outside/c0.wav,w0,s0\n")
    with pytest.raises(DataError, match=r"'\.\./outside/c0\.wav' leads out of the data folder"):
        load_data(str(data), ["word"])
    (data / "metadata.csv").write_text(meta + "sub/../../outside/c1.wav,w0,s0\n")
    with pytest.raises(DataError, match="leads out of the data folder"):
        load_data(str(data), ["word"])
    os.symlink(outside / "c0.wav", data / "link.wav")
    (data / "metadata.csv").write_text(meta + "link.wav,w0,s0\n")
    with pytest.raises(DataError, match="through a symbolic link"):
        load_data(str(data), ["word"])
    os.symlink("/etc/passwd", data / "passwd.wav")
    (data / "metadata.csv").write_text(meta + "passwd.wav,w0,s0\n")
    res = cli("extract", "tiny:wav2vec2", str(data), "--cache-dir", str(tmp_path / "c"), "--no-progress")
    assert res.code == 2 and "passwd.wav" in res.error_lines[0] and "Traceback" not in res.err
    # a link that stays inside the folder is fine
    (data / "inner").mkdir()
    os.symlink(data / "c1.wav", data / "inner" / "same.wav")
    (data / "metadata.csv").write_text(meta + "inner/same.wav,w1,s1\n")
    assert len(load_data(str(data), ["word"])) == 5
