"""Feature extraction at scale: the same cache bytes as pooling the stacked states, length bucketing that restores
the dataset's order, and several processes (`accelerate launch`, gloo on CPU) sharing one extraction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from speechprune.features import extract_features
from speechprune.features.pooling import POOLINGS, pool_states
from speechprune.models import load_encoder

sys.path.insert(0, str(Path(__file__).parent))
from test_features import make_dataset  # noqa: E402

LENGTHS = (16000, 4000, 12000, 6500)


def same_entry_file(a: Path, b: Path) -> bool:
    """Byte-identical, except the provenance timestamp (``written_utc``) of the JSON files, which records when each
    was written."""
    if a.suffix != ".json":
        return a.read_bytes() == b.read_bytes()

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "written_utc"}
        return [strip(v) for v in x] if isinstance(x, list) else x

    return strip(json.loads(a.read_text())) == strip(json.loads(b.read_text()))


def _stacked_reference(enc, ds, pooling: str, layers, final_norm: bool, batch_size: int) -> np.ndarray:
    """The extraction path before the stacking buffer: all states of a batch, stacked, pooled, concatenated."""
    parts = []
    for k in range(0, len(ds), batch_size):
        idx = list(range(k, min(k + batch_size, len(ds))))
        inputs = enc.prepare([ds.load_audio(i) for i in idx])
        states = enc.hidden_states(inputs, layers=layers, final_norm=final_norm)
        segs = [ds.items[i].segments for i in idx] if pooling == "segment" else None
        parts.append(pool_states(states, inputs.frame_lengths, pooling, enc.frame_rate, segs).states.numpy())
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("family", ["wav2vec2", "wav2vec2-stable", "whisper"])
def test_cache_bytes_equal_pooling_the_stacked_states(family: str, tmp_path: Path, one_thread) -> None:
    """Pooling each state as it arrives (hooks installed once, one stacking buffer) does the same arithmetic as
    the old path, bit for bit, for every pooling and with a subset of states plus the final norm."""
    enc = load_encoder(f"tiny:{family}")
    ds = make_dataset(5, lengths=LENGTHS)
    for pooling in POOLINGS:
        for layers, final_norm in ((None, False), ([4, 0, 2], True)):
            feats = extract_features(enc, ds, pooling=pooling, layers=layers, final_norm=final_norm, batch_size=2,
                                     bucket=False, cache_dir=tmp_path, progress=False)
            ref = _stacked_reference(enc, ds, pooling, layers, final_norm, 2)
            assert feats.states.shape == ref.shape and feats.states.tobytes() == ref.tobytes(), (pooling, layers)


def test_length_bucketing_keeps_order_labels_and_values(tmp_path: Path, monkeypatch) -> None:
    """A masked model buckets by default: less padding, rows back in dataset order, the same values as batches in
    dataset order (to float rounding: a clip is computed at another padded length), its own cache key."""
    enc = load_encoder("tiny:wav2vec2-stable")
    ds = make_dataset(7, lengths=LENGTHS)
    padded: list[int] = []
    prepare = enc.prepare
    monkeypatch.setattr(enc, "prepare", lambda waves: padded.append(len(waves) * max(map(len, waves))) or
                        prepare(waves))
    for pooling in ("mean", "segment", "frames"):
        padded.clear()
        plain = extract_features(enc, ds, pooling=pooling, batch_size=3, bucket=False, cache_dir=tmp_path,
                                 progress=False)
        plain_padded = sum(padded)
        padded.clear()
        bucketed = extract_features(enc, ds, pooling=pooling, batch_size=3, cache_dir=tmp_path, progress=False)
        assert sum(padded) < plain_padded  # 7 clips of 4 lengths: sorted batches pad less
        assert bucketed.meta["request"]["order"] == "length" and "order" not in plain.meta["request"]
        assert bucketed.path != plain.path
        np.testing.assert_array_equal(bucketed.item_index, plain.item_index)
        assert bucketed.labels == plain.labels and bucketed.groups == plain.groups
        assert bucketed.meta["item_keys"] == plain.meta["item_keys"]
        np.testing.assert_allclose(bucketed.states, plain.states, atol=2e-5, rtol=0)
    # un-masked models (padding leaks into the features) and mean-all keep dataset order unless asked
    for model, pooling in (("tiny:wav2vec2", "mean"), ("tiny:wav2vec2-stable", "mean-all")):
        auto = extract_features(load_encoder(model), ds, pooling=pooling, batch_size=3, cache_dir=tmp_path,
                                progress=False)
        assert "order" not in auto.meta["request"]
    forced = extract_features(load_encoder("tiny:wav2vec2"), ds, batch_size=3, bucket=True, cache_dir=tmp_path,
                              progress=False)
    assert forced.meta["request"]["order"] == "length" and forced.meta["item_keys"] == [f"clip{i}" for i in range(7)]


def test_interrupted_bucketed_extraction_resumes_byte_identical(tmp_path: Path) -> None:
    enc = load_encoder("tiny:wav2vec2-stable")
    ds = make_dataset(7, lengths=LENGTHS)
    ref = extract_features(enc, ds, pooling="segment", batch_size=2, cache_dir=tmp_path / "a", progress=False)
    assert extract_features(enc, ds, pooling="segment", batch_size=2, cache_dir=tmp_path / "b", progress=False,
                            stop_after_batches=2) is None
    resumed = extract_features(enc, ds, pooling="segment", batch_size=2, cache_dir=tmp_path / "b", progress=False)
    for name in ("features.safetensors", "meta.json"):
        assert same_entry_file(resumed.path / name, ref.path / name)


_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_features import make_dataset
    from speechprune.errors import AudioError
    from speechprune.features import extract_features
    from speechprune.models import load_encoder
    from speechprune.utils import distributed

    cache = sys.argv[1]
    paths = []
    ds = make_dataset(9, lengths={lengths!r})
    # bucketed (masked model) with segment rows, and dataset order (un-masked model)
    for model, pooling in (("tiny:wav2vec2-stable", "segment"), ("tiny:wav2vec2", "mean")):
        feats = extract_features(load_encoder(model), ds, pooling=pooling, batch_size=2, cache_dir=cache,
                                 progress=False)
        paths.append(str(feats.path))
    # bad audio in one process's share stops every process with the file's error, and no partial entry is left
    bad = make_dataset(9, lengths={lengths!r})
    bad.items[3].array[10] = np.nan  # batch 1 (clips 2-3): the second process's first batch
    try:
        extract_features(load_encoder("tiny:wav2vec2"), bad, batch_size=2, cache_dir=cache, progress=False)
        paths.append("no error")
    except AudioError as exc:
        paths.append("AudioError: " + ("clip3" in str(exc)) * "names clip3")
    if distributed.is_main_process():
        print("RESULT " + json.dumps(paths))
""")


@pytest.mark.slow
def test_two_process_accelerate_extraction_is_byte_identical_to_one(tmp_path: Path) -> None:
    """`accelerate launch --num_processes 2` on CPU (gloo): the processes share the batches and the main process
    consolidates one entry byte-identical to a single process's (same threads per process, so the same kernels)."""
    script = tmp_path / "extract.py"
    script.write_text(_SCRIPT.format(tests=str(Path(__file__).parent), lengths=LENGTHS))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("WORLD_SIZE", None)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "29547"]
    results = {}
    for name, prefix in (("one", [sys.executable]), ("two", launch)):
        proc = subprocess.run([*prefix, str(script), str(tmp_path / name)], capture_output=True, text=True, env=env,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]  # main process only
        results[name] = json.loads(line[len("RESULT "):])
    assert results["one"][2] == results["two"][2] == "AudioError: names clip3"
    for one, two in zip(results["one"][:2], results["two"][:2]):
        assert Path(one).name == Path(two).name  # same key
        for name in ("features.safetensors", "meta.json", "request.json"):
            assert same_entry_file(Path(one) / name, Path(two) / name), (two, name)
        run = json.loads((Path(two) / "run.json").read_text())
        assert run["batches_per_process"] == [3, 2]  # 5 batches of 2 clips, every other one
    assert len(list((tmp_path / "two").iterdir())) == 2  # the failed request left no entry


def test_allocator_settings_apply_once_and_can_be_turned_off() -> None:
    import platform

    code = "from speechprune.utils.malloc import tune_allocator as t; print(t(), t())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("LD_PRELOAD", None)
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    off = subprocess.run([sys.executable, "-c", code], env={**env, "SPEECHPRUNE_MALLOC": "default"},
                         capture_output=True, text=True, check=True).stdout
    glibc = platform.libc_ver()[0] == "glibc"
    assert on.split() == [str(glibc)] * 2 and off.split() == ["False", "False"]
