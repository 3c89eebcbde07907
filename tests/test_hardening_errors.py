"""Issue 15: a clear one-line error instead of every traceback — output or cache paths that are files or not
writable (every writer), backwards layer ranges, bad seeds, a bad ``architectures`` entry, truncated safetensors,
too-short clips (named), BOM configs for ``run``; and Ctrl-C: one line, exit 130, no half-written output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from _hardening import audiofolder, cli, snapshot

WRITERS = {
    "extract --out": ["extract", "tiny:wav2vec2", "DATA", "--out", "TARGET", "--cache-dir", "CACHE"],
    "extract --cache-dir": ["extract", "tiny:wav2vec2", "DATA", "--cache-dir", "TARGET"],
    "analyze -o": ["analyze", "tiny:wav2vec2", "DATA", "-l", "word", "-o", "TARGET", "--cache-dir", "CACHE"],
    "analyze --cache-dir": ["analyze", "tiny:wav2vec2", "DATA", "-l", "word", "-o", "OUT", "--cache-dir", "TARGET",
                            "-m", "similarity"],
    "finetune -o": ["finetune", "tiny:wav2vec2", "DATA", "-l", "word", "-o", "TARGET"],
    "prune layers -o": ["prune", "layers", "tiny:wav2vec2", "-o", "TARGET", "--keep", "1"],
    "prune structured -o": ["prune", "structured", "tiny:wav2vec2", "DATA", "-l", "word", "-o", "TARGET"],
    "distill -o": ["distill", "tiny:wav2vec2", "DATA", "-l", "word", "-o", "TARGET"],
    "import-ct2 OUT": ["import-ct2", "tiny.en", "TARGET"],
    "run out=": ["run", "model=tiny:wav2vec2", "data=DATA", "label=word", "out=TARGET"],
}
FILE_WRITERS = {
    "evaluate -o": ["evaluate", "tiny:wav2vec2", "DATA", "-l", "word", "-o", "TARGET"],
    "profile --json": ["profile", "tiny:wav2vec2", "--json", "TARGET", "--no-latency", "--no-flop-check"],
}


def _args(template: list[str], tmp: Path, data: Path, target: Path) -> list[str]:
    subst = {"DATA": str(data), "TARGET": str(target), "CACHE": str(tmp / "cache"), "OUT": str(tmp / "out")}
    return [subst.get(a, a.replace("DATA", str(data)).replace("TARGET", str(target))) for a in template]


def _one_clean_error(res, culprit: str) -> None:
    assert res.code == 2, res.err
    assert "Traceback" not in res.err and len(res.error_lines) == 1, res.err
    assert culprit in res.error_lines[0], res.err


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_folder_output_that_is_a_file_is_a_clear_error(tmp_path: Path, name: str) -> None:
    data = audiofolder(tmp_path / "d")
    target = tmp_path / "target"
    target.write_text("a file, not a folder")
    res = cli(*_args(WRITERS[name], tmp_path, data, target))
    _one_clean_error(res, str(target))
    assert target.read_text() == "a file, not a folder"


@pytest.mark.parametrize("name", sorted(FILE_WRITERS))
def test_a_file_output_that_is_a_folder_is_a_clear_error(tmp_path: Path, name: str) -> None:
    data = audiofolder(tmp_path / "d")
    target = tmp_path / "target"
    target.mkdir()
    _one_clean_error(cli(*_args(FILE_WRITERS[name], tmp_path, data, target)), str(target))


@pytest.mark.parametrize("name", sorted(WRITERS) + sorted(FILE_WRITERS))
def test_an_output_under_an_unwritable_folder_is_a_clear_error(tmp_path: Path, name: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = audiofolder(tmp_path / "d")
    locked = tmp_path / "readonly"
    locked.mkdir()
    real_access = os.access
    # (tests may run as root, for whom chmod does not stop writing: the permission check itself is simulated)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))
    template = {**WRITERS, **FILE_WRITERS}[name]
    res = cli(*_args(template, tmp_path, data, locked / "target"))
    _one_clean_error(res, "not writable")
    assert list(locked.iterdir()) == []


def test_a_file_in_the_way_of_a_parent_folder(tmp_path: Path) -> None:
    data = audiofolder(tmp_path / "d")
    (tmp_path / "f").write_text("x")
    res = cli("analyze", "tiny:wav2vec2", str(data), "-l", "word", "-o", str(tmp_path / "f" / "sub" / "out"))
    _one_clean_error(res, "is a file, not a folder")


@pytest.mark.parametrize("layers,culprit", [("3-1", "3-1"), ("-1", "-1"), ("1-", "1-"), ("x", "x"), ("0,9", "9")])
def test_bad_layer_lists(tmp_path: Path, layers: str, culprit: str) -> None:
    data = audiofolder(tmp_path / "d")
    res = cli("extract", "tiny:wav2vec2", str(data), "--layers", layers, "--cache-dir", str(tmp_path / "c"))
    _one_clean_error(res, culprit)


@pytest.mark.parametrize("command", [
    ["analyze", "tiny:wav2vec2", "DATA", "-l", "word", "--seed", "-1", "-o", "OUT"],
    ["evaluate", "tiny:wav2vec2", "DATA", "-l", "word", "--seed", "-1"],
    ["finetune", "tiny:wav2vec2", "DATA", "-l", "word", "--seed", "-1", "-o", "OUT"],
    ["prune", "structured", "tiny:wav2vec2", "DATA", "-l", "word", "--seed", "-1", "-o", "OUT"],
    ["distill", "tiny:wav2vec2", "DATA", "-l", "word", "--seed", "-1", "-o", "OUT"],
    ["run", "model=tiny:wav2vec2", "data=DATA", "label=word", "seed=-1", "out=OUT"],
])
def test_negative_seeds(tmp_path: Path, command: list[str]) -> None:
    data = audiofolder(tmp_path / "d")
    res = cli(*_args(command, tmp_path, data, tmp_path / "t"))
    _one_clean_error(res, "seed")
    assert not (tmp_path / "out").exists()


def test_bad_architectures_and_truncated_weights(tmp_path: Path) -> None:
    from speechprune.models import load_encoder

    good = tmp_path / "m"
    load_encoder("tiny:wav2vec2").save_pretrained(good)
    for name, change in [
        ("other-family", lambda c: c.update(architectures=["BertModel"])),
        ("not-a-list", lambda c: c.update(architectures="Wav2Vec2Model")),
        ("not-a-name", lambda c: c.update(architectures=[3])),
    ]:
        bad = tmp_path / name
        os.system(f"cp -r {good} {bad}")
        cfg = json.loads((bad / "config.json").read_text())
        change(cfg)
        (bad / "config.json").write_text(json.dumps(cfg))
        _one_clean_error(cli("info", str(bad)), "architectures")
    for size in (0, 7, 1000):
        bad = tmp_path / f"trunc{size}"
        os.system(f"cp -r {good} {bad}")
        os.truncate(bad / "model.safetensors", size)
        _one_clean_error(cli("info", str(bad)), str(bad))


def test_a_damaged_feature_cache_entry_is_named(tmp_path: Path) -> None:
    data = audiofolder(tmp_path / "d")
    res = cli("extract", "tiny:wav2vec2", str(data), "--cache-dir", str(tmp_path / "c"), "--no-progress")
    entry = Path(res.out.strip().splitlines()[-1])
    os.truncate(entry / "features.safetensors", 10)
    res = cli("extract", "tiny:wav2vec2", str(data), "--cache-dir", str(tmp_path / "c"), "--no-progress")
    _one_clean_error(res, str(entry))


def test_a_too_short_clip_is_named(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    data = audiofolder(tmp_path / "d", n=6)
    sf.write(data / "c3.wav", np.zeros(100, dtype=np.float32) + 0.01, 16000)
    res = cli("extract", "tiny:wav2vec2", str(data), "--cache-dir", str(tmp_path / "c"), "--no-progress")
    _one_clean_error(res, "c3.wav")
    assert "batch position" not in res.err
    res = cli("finetune", "tiny:wav2vec2", str(data), "-l", "word", "-o", str(tmp_path / "o"), "--no-progress")
    _one_clean_error(res, "c3.wav")


def test_run_accepts_a_bom_config_and_bom_metadata(tmp_path: Path) -> None:
    from speechprune.pipeline import load_run_config

    data = audiofolder(tmp_path / "d")
    (data / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + (data / "metadata.csv").read_bytes())
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(b"\xef\xbb\xbf" + f"model: tiny:wav2vec2\ndata: {data}\nlabel: word\ngroup: speaker\n".encode())
    loaded = load_run_config(cfg, [f"out={tmp_path / 'o'}"])
    assert loaded.model == "tiny:wav2vec2" and loaded.label == "word"


def test_ctrl_c_is_one_line_exit_130_and_leaves_no_half_written_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import speechprune.analysis.runner as runner

    def interrupted(encoder, dataset, cfg, out, **kw):
        (out / "config.yaml").write_text("half")
        (out / "similarity_cosine.csv").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_analysis", interrupted)
    data = audiofolder(tmp_path / "d")
    before = snapshot(tmp_path)
    res = cli("analyze", "tiny:wav2vec2", str(data), "-l", "word", "-o", str(tmp_path / "a"), "--no-progress")
    assert res.code == 130 and "Traceback" not in res.err
    assert [line for line in res.err.splitlines() if line.strip()][-1].startswith("interrupted")
    assert snapshot(tmp_path) == before  # no output folder, no temporary folder, no lock file


def test_convexity_workers_leave_ctrl_c_to_the_main_process() -> None:
    import multiprocessing
    import signal

    from speechprune.analysis.convexity import _ignore_sigint

    with multiprocessing.get_context("fork").Pool(1, initializer=_ignore_sigint) as pool:
        handler = pool.apply(signal.getsignal, (signal.SIGINT,))
    assert handler == signal.SIG_IGN
