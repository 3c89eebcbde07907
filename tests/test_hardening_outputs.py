"""Issue 15, "never lose a result or a user file": locks (a second writer fails with "in use by pid N"), one output
rule for every writer (a non-empty foreign output needs --overwrite, a folder is replaced whole), umask-respecting
permissions, and the checkpoint swap recovered from either copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _hardening import audiofolder, cli, snapshot

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _hold_lock_in_subprocess(target: Path) -> subprocess.Popen:
    """Another process that holds the lock on ``target`` until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from speechprune.utils.locks import PathLock
        PathLock({str(target)!r}).acquire()
        print("locked", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_names_the_pid_of_the_other_process_and_is_released_when_it_dies(tmp_path: Path) -> None:
    from speechprune.utils.locks import LockedError, PathLock

    target = tmp_path / "out"
    proc = _hold_lock_in_subprocess(target)
    try:
        with pytest.raises(LockedError, match=rf"in use by pid {proc.pid}"):
            PathLock(target).acquire()
    finally:
        proc.kill()  # like kill -9: the OS drops the lock
        proc.wait()
    with PathLock(target):
        with PathLock(target):  # re-entrant within one process
            pass
    assert not (tmp_path / ".out.lock").exists()  # no litter once released


@pytest.mark.parametrize("command", [
    ["finetune", "tiny:wav2vec2", "DATA", "-l", "word", "-o", "OUT", "--epochs", "1", "--no-progress"],
    ["extract", "tiny:wav2vec2", "DATA", "--out", "OUT", "--cache-dir", "CACHE", "--no-progress"],
    ["analyze", "tiny:wav2vec2", "DATA", "-l", "word", "-o", "OUT", "--cache-dir", "CACHE", "--no-progress"],
    ["prune", "layers", "tiny:wav2vec2", "-o", "OUT", "--keep", "1"],
    ["run", "model=tiny:wav2vec2", "data=DATA", "label=word", "out=OUT"],
])
def test_a_second_writer_of_the_same_output_fails_at_once(tmp_path: Path, command: list[str]) -> None:
    data = audiofolder(tmp_path / "data")
    out = tmp_path / "out"
    args = [str(data) if a == "DATA" else str(out) if a == "OUT" else str(tmp_path / "cache") if a == "CACHE"
            else a.replace("DATA", str(data)).replace("OUT", str(out)) for a in command]
    proc = _hold_lock_in_subprocess(out)
    try:
        res = cli(*args)
    finally:
        proc.kill()
        proc.wait()
    assert res.code == 2, res.err
    assert len(res.error_lines) == 1 and f"in use by pid {proc.pid}" in res.error_lines[0], res.err
    assert not out.exists()


def test_concurrent_extractions_of_one_cache_entry_do_not_crash_each_other(tmp_path: Path) -> None:
    from speechprune.data.sources import load_data
    from speechprune.features import extract_features
    from speechprune.features.extract import request_key
    from speechprune.features import store
    from speechprune.models import load_encoder
    from speechprune.utils.locks import LockedError

    data = audiofolder(tmp_path / "data")
    enc, ds = load_encoder("tiny:wav2vec2"), load_data(str(data), ["word"])
    key, _ = request_key(enc, ds, {"pooling": "mean", "layers": list(range(enc.num_states)), "batch_size": 8,
                                   "dtype": "fp32", "device": "cpu", "final_norm": False})
    entry = store.entry_dir(tmp_path / "cache", ds.name, key)
    proc = _hold_lock_in_subprocess(entry)
    try:
        with pytest.raises(LockedError, match=f"pid {proc.pid}"):
            extract_features(enc, ds, cache_dir=tmp_path / "cache", progress=False)
    finally:
        proc.kill()
        proc.wait()
    feats = extract_features(enc, ds, cache_dir=tmp_path / "cache", progress=False)
    assert feats.path == entry


def test_foreign_outputs_are_refused_and_own_outputs_replaced_whole(tmp_path: Path) -> None:
    data = audiofolder(tmp_path / "data")
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "config.yaml").write_text("my: own file\n")
    before = snapshot(out)
    args = ["analyze", "tiny:wav2vec2", str(data), "-l", "word", "-o", str(out), "--cache-dir", str(tmp_path / "c"),
            "-m", "similarity", "--similarity", "cosine", "--permutations", "0", "--no-progress"]
    res = cli(*args)
    assert res.code == 2 and "--overwrite" in res.error_lines[0] and str(out) in res.error_lines[0], res.err
    assert snapshot(out) == before  # the user's config.yaml is untouched
    res = cli(*args, "--overwrite")
    assert res.code == 0, res.err
    assert (out / "metrics.json").is_file() and "my: own file" not in (out / "config.yaml").read_text()
    (out / "probes.csv").write_text("stale")  # a file that the next run would not write
    res = cli(*args)  # our own earlier result: replaced as a whole, no stale file left beside the new results
    assert res.code == 0, res.err
    assert not (out / "probes.csv").exists() and (out / "metrics.json").is_file()

    feats_out = tmp_path / "features"
    feats_out.mkdir()
    (feats_out / "features.safetensors").write_text("precious")
    res = cli("extract", "tiny:wav2vec2", str(data), "--out", str(feats_out), "--cache-dir", str(tmp_path / "c"),
              "--no-progress")
    assert res.code == 2 and "--overwrite" in res.err
    assert (feats_out / "features.safetensors").read_text() == "precious"


def test_run_never_replaces_the_input_config_kept_in_out(tmp_path: Path, monkeypatch) -> None:
    from speechprune.utils.outputs import write_owned_text

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("# mine\nmodel: tiny:wav2vec2\n")
    assert not write_owned_text(out / "config.yaml", "model: x\n", "# written by speechprune run")
    assert (out / "config.yaml").read_text() == "# mine\nmodel: tiny:wav2vec2\n"
    assert write_owned_text(out / "other.yaml", "a: 1\n", "# m") and write_owned_text(out / "other.yaml", "a: 2\n", "# m")
    assert (out / "other.yaml").read_text() == "# m\na: 2\n"


def test_run_refuses_a_foreign_out_and_resumes_its_own(tmp_path: Path) -> None:
    from speechprune.utils.outputs import OutputError, claim_run_output

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(OutputError, match="--overwrite"):
        claim_run_output(foreign, overwrite=False)
    claim_run_output(foreign, overwrite=True).release()
    assert not (foreign / "notes.txt").exists()
    own = tmp_path / "own"
    (own / "stages").mkdir(parents=True)
    (own / "stages" / "baseline.json").write_text("{}")
    claim_run_output(own, overwrite=False).release()
    assert (own / "stages" / "baseline.json").exists()


def test_files_and_folders_follow_the_umask(tmp_path: Path) -> None:
    from speechprune.data.sources import load_data
    from speechprune.features import extract_features
    from speechprune.models import load_encoder

    data = audiofolder(tmp_path / "data")
    old = os.umask(0o027)
    try:
        enc = load_encoder("tiny:wav2vec2")
        enc.save_pretrained(tmp_path / "model")
        feats = extract_features(enc, load_data(str(data), ["word"]), cache_dir=tmp_path / "cache", progress=False)
    finally:
        os.umask(old)
    for folder in (tmp_path / "model", feats.path):
        for p in folder.rglob("*"):
            mode = p.stat().st_mode & 0o777
            assert mode == (0o750 if p.is_dir() else 0o640), (p, oct(mode))


def test_checkpoint_swap_interrupted_between_the_renames_resumes_from_either_copy(tmp_path: Path) -> None:
    from speechprune.train.loop import STATE_FILE
    from speechprune.utils.io import recover_swap, replace_dir

    def checkpoint(folder: Path, epoch: int) -> Path:
        folder.mkdir(parents=True)
        (folder / STATE_FILE).write_text(json.dumps({"epoch": epoch}))
        return folder

    # crash after "checkpoint -> .checkpoint.old", before "checkpoint.tmp -> checkpoint": both copies on disk
    dest, tmp, old = tmp_path / "checkpoint", tmp_path / "checkpoint.tmp", tmp_path / ".checkpoint.old"
    checkpoint(old, 1)
    checkpoint(tmp, 2)
    assert recover_swap(dest, tmp, STATE_FILE)
    assert json.loads((dest / STATE_FILE).read_text())["epoch"] == 2 and not old.exists()
    # the new copy incomplete (no state file yet): the old one is taken
    replace_dir(dest, tmp_path / "x")  # move away
    checkpoint(old, 1)
    tmp.mkdir()
    assert recover_swap(dest, tmp, STATE_FILE)
    assert json.loads((dest / STATE_FILE).read_text())["epoch"] == 1
    assert not recover_swap(dest, tmp, STATE_FILE)  # nothing to do when the checkpoint is in place


@pytest.mark.slow
def test_finetune_resume_after_a_crash_between_the_renames(tmp_path: Path) -> None:
    from speechprune.data.sources import load_data
    from speechprune.models import load_encoder
    from speechprune.train.finetune import finetune, work_dir_for
    from speechprune.train.loop import TrainConfig

    data = audiofolder(tmp_path / "data", n=12)
    ds = load_data(str(data), ["word"])
    out = tmp_path / "model"
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3, seed=0)
    finetune(load_encoder("tiny:wav2vec2"), ds, "word", out, cfg, resume=False, progress=False,
             evaluate_test=False, stop_after_epochs=1)
    ckpt = work_dir_for(out) / "checkpoint"
    ckpt.rename(ckpt.with_name(".checkpoint.old"))  # the crash: only the old copy is on disk
    res = finetune(load_encoder("tiny:wav2vec2"), ds, "word", out, cfg, resume=True, progress=False,
                   evaluate_test=False)
    assert res["training"]["epochs_run"] == 2 and (out / "training.json").is_file()


def test_run_with_its_input_config_in_out_neither_refuses_nor_deletes_it(tmp_path: Path) -> None:
    from speechprune.utils.outputs import claim_run_output

    out = tmp_path / "run"
    out.mkdir()
    config = out / "config.yaml"
    config.write_text("# mine\n")
    claim_run_output(out, overwrite=False, config=config).release()
    claim_run_output(out, overwrite=True, config=config).release()
    assert config.read_text() == "# mine\n"
