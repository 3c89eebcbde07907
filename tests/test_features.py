"""Pooling, the feature cache, resume after interruption, and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechprune.data.types import AudioDataset, AudioItem, Segment
from speechprune.errors import AudioError, LayerIndexError, SpeechpruneError
from speechprune.features import extract_features, load_features, pool_states
from speechprune.features.pooling import segment_frames
from speechprune.models import load_encoder


def make_dataset(n: int = 10, seed: int = 0, lengths=(16000, 9000, 12000)) -> AudioDataset:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        samples = (0.1 * rng.standard_normal(lengths[i % len(lengths)])).astype(np.float32)
        items.append(
            AudioItem(
                key=f"clip{i}", labels={"word": f"w{i % 3}", "speaker": f"s{i % 2}"}, group=f"s{i % 2}",
                array=samples, sampling_rate=16000,
                segments=[Segment(0.0, 0.2, "a"), Segment(0.2, 0.5, "b")],
            )
        )
    return AudioDataset(items, ["word", "speaker"], group_column="speaker", name="toy")


# --- pooling -------------------------------------------------------------------------------------------------
def test_padding_aware_mean_ignores_padded_frames() -> None:
    torch.manual_seed(0)
    states = [torch.randn(2, 10, 4) for _ in range(3)]
    lengths = torch.tensor([10, 6])
    garbage = [s.clone() for s in states]
    for g in garbage:
        g[1, 6:] = 1e6  # padded frames must not matter
    pooled = pool_states(garbage, lengths, "mean", 50.0)
    assert pooled.states.shape == (3, 2, 4)
    for i, s in enumerate(states):
        torch.testing.assert_close(pooled.states[i, 1], s[1, :6].mean(0))
        torch.testing.assert_close(pooled.states[i, 0], s[0].mean(0))
    all_frames = pool_states(garbage, lengths, "mean-all", 50.0)
    assert all_frames.states[0, 1].abs().max() > 1e4  # the papers' pooling does include padding


def test_frame_and_segment_pooling() -> None:
    states = [torch.arange(2 * 10 * 2, dtype=torch.float32).reshape(2, 10, 2)]
    lengths = torch.tensor([10, 4])
    frames = pool_states(states, lengths, "frames", 50.0)
    assert frames.states.shape == (1, 14, 2)
    assert frames.item_index.tolist() == [0] * 10 + [1] * 4
    segs = [[Segment(0.0, 0.04, "a"), Segment(0.04, 0.1, "b")], [Segment(0.0, 0.05, "c"), Segment(0.1, 0.2, "d")]]
    pooled = pool_states(states, lengths, "segment", 50.0, segs)
    # 50 frames/s: [0, 0.04) → frames 0-1; [0.04, 0.1) → frames 2-4; clip 1: [0, 0.05) → frames 0-2;
    # [0.1, 0.2) starts at frame 5, beyond the 4 valid frames → dropped
    assert [s.label for s in pooled.segments] == ["a", "b", "c"]
    assert pooled.dropped_segments == 1
    torch.testing.assert_close(pooled.states[0, 0], states[0][0, 0:2].mean(0))
    torch.testing.assert_close(pooled.states[0, 1], states[0][0, 2:5].mean(0))
    torch.testing.assert_close(pooled.states[0, 2], states[0][1, 0:3].mean(0))
    assert segment_frames(Segment(0.101, 0.105, "short"), 50.0, 10) == (5, 6)  # shorter than a frame: kept
    with pytest.raises(SpeechpruneError, match="unknown pooling"):
        pool_states(states, lengths, "max", 50.0)


def test_masked_model_features_do_not_depend_on_batch_padding(tmp_path: Path) -> None:
    """With an attention-masked (layer-norm CNN) model and padding-aware pooling, a clip's features are the same
    whether it is batched with a longer clip or alone."""
    enc = load_encoder("tiny:wav2vec2-stable")
    assert enc.preparation_options()["attention_mask"] is True
    ds = make_dataset(2, lengths=(16000, 7000))
    together = extract_features(enc, ds, batch_size=2, cache_dir=tmp_path, progress=False)
    alone = extract_features(enc, ds, batch_size=1, cache_dir=tmp_path, progress=False)
    assert together.path != alone.path  # batch size is part of the key
    np.testing.assert_allclose(together.states, alone.states, atol=2e-5)


# --- extraction + cache -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_extract_shapes_labels_and_equality_with_direct_forward(family: str, tmp_path: Path) -> None:
    enc = load_encoder(f"tiny:{family}")
    ds = make_dataset(5)
    feats = extract_features(enc, ds, batch_size=2, cache_dir=tmp_path, progress=False)
    assert feats.states.shape == (5, 5, 32) and feats.layers == [0, 1, 2, 3, 4]
    assert feats.labels["word"] == ["w0", "w1", "w2", "w0", "w1"] and feats.groups[:2] == ["s0", "s1"]
    # row 3 equals a direct forward of clips 2-3 (its batch) pooled over valid frames
    waves = [ds.load_audio(2), ds.load_audio(3)]
    inputs = enc.prepare(waves)
    direct = enc.hidden_states(inputs)
    n = int(inputs.frame_lengths[1])
    for s in range(5):
        np.testing.assert_allclose(feats.layer(s)[3], direct[s][1, :n].mean(0).numpy(), atol=1e-6)
    with pytest.raises(LayerIndexError, match="state 7"):
        feats.layer(7)


def test_cache_hit_skips_compute_and_label_edits_keep_the_entry(tmp_path: Path, monkeypatch) -> None:
    enc = load_encoder("tiny:hubert")
    ds = make_dataset(4)
    first = extract_features(enc, ds, batch_size=2, cache_dir=tmp_path, progress=False)

    def boom(*a, **k):
        raise AssertionError("cache hit must not run the model")

    monkeypatch.setattr(enc, "_run_encoder", boom)
    again = extract_features(enc, ds, batch_size=2, cache_dir=tmp_path, progress=False)
    assert again.path == first.path and np.array_equal(again.states, first.states)
    relabelled = make_dataset(4)
    relabelled.items[0].labels["word"] = "changed"
    assert extract_features(enc, relabelled, batch_size=2, cache_dir=tmp_path, progress=False).path == first.path
    with pytest.raises(AssertionError, match="cache hit"):
        extract_features(enc, ds, batch_size=2, cache_dir=tmp_path, pooling="mean-all", progress=False)


def test_interrupted_extraction_resumes_and_is_byte_identical(tmp_path: Path) -> None:
    enc = load_encoder("tiny:wavlm")
    ds = make_dataset(10)
    ref = extract_features(enc, ds, batch_size=2, cache_dir=tmp_path / "a", progress=False)

    partial = extract_features(enc, ds, batch_size=2, cache_dir=tmp_path / "b", progress=False, stop_after_batches=2)
    assert partial is None
    entry = next((tmp_path / "b").iterdir())
    assert sorted(p.name for p in (entry / "shards").iterdir()) == ["00000.safetensors", "00001.safetensors"]
    assert not (entry / "meta.json").exists()

    calls = []
    original = enc._run_encoder
    enc._run_encoder = lambda *a, **k: calls.append(1) or original(*a, **k)  # type: ignore[method-assign]
    resumed = extract_features(enc, ds, batch_size=2, cache_dir=tmp_path / "b", progress=False)
    assert len(calls) == 3, "only the 3 unfinished batches may be computed"
    from test_extract_scale import same_entry_file

    for name in ("features.safetensors", "meta.json"):
        assert same_entry_file(resumed.path / name, ref.path / name)  # meta.json: but for its written_utc
    assert not (resumed.path / "shards").exists()


def test_killed_process_resumes(tmp_path: Path) -> None:
    """A real SIGKILL in the middle of extraction; the next run finishes from the shards left behind."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # same GEMM blocking as the in-process reference
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_features import make_dataset
        from speechprune.models import load_encoder
        from speechprune.features import extract_features
        enc = load_encoder("tiny:wav2vec2")
        orig = enc._run_encoder
        def slow(*a, **k):
            time.sleep(float(sys.argv[2]))
            return orig(*a, **k)
        enc._run_encoder = slow
        extract_features(enc, make_dataset(12), batch_size=2, cache_dir=sys.argv[1], progress=False)
    """))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "c"), "0.4"], env=env)
    deadline = time.time() + 600  # a loaded shared machine can take minutes just to import torch
    shards = []
    while time.time() < deadline:
        shards = list((tmp_path / "c").glob("*/shards/*.safetensors"))
        if len(shards) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= len(shards) < 6, "the process must have been killed part-way"
    subprocess.run([sys.executable, str(script), str(tmp_path / "c"), "0"], env=env, check=True)
    enc = load_encoder("tiny:wav2vec2")
    ref = extract_features(enc, make_dataset(12), batch_size=2, cache_dir=tmp_path / "d", progress=False)
    got = load_features(next((tmp_path / "c").iterdir()))
    assert (got.path / "features.safetensors").read_bytes() == (ref.path / "features.safetensors").read_bytes()


def test_segment_pooling_extraction(tmp_path: Path) -> None:
    enc = load_encoder("tiny:data2vec-audio")
    ds = make_dataset(3)
    feats = extract_features(enc, ds, pooling="segment", batch_size=2, cache_dir=tmp_path, progress=False)
    assert feats.labels["segment"] == ["a", "b"] * 3
    assert feats.item_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert feats.labels["word"] == ["w0", "w0", "w1", "w1", "w2", "w2"]


def test_bf16_is_close_to_fp32(tmp_path: Path) -> None:
    enc = load_encoder("tiny:wav2vec2")
    ds = make_dataset(4)
    a = extract_features(enc, ds, cache_dir=tmp_path, progress=False)
    b = extract_features(enc, ds, cache_dir=tmp_path, progress=False, dtype="bf16")
    assert a.path != b.path
    cos = (a.states * b.states).sum(-1) / (np.linalg.norm(a.states, axis=-1) * np.linalg.norm(b.states, axis=-1))
    assert cos.min() > 0.98 and not np.array_equal(a.states, b.states)


# --- bad input -------------------------------------------------------------------------------------------------
def _file_dataset(folder: Path, bad: str) -> AudioDataset:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    items = []
    for i in range(5):
        p = folder / f"ok{i}.wav"
        sf.write(p, (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
        items.append(AudioItem(key=p.name, labels={"word": "x"}, path=p))
    p = folder / "bad.wav"
    if bad == "corrupt":
        p.write_bytes(b"RIFF\x00\x00garbage-not-a-wav" * 10)
    elif bad == "empty":
        p.write_bytes(b"")
    elif bad == "zero-length":
        sf.write(p, np.zeros(0, np.float32), 16000)
    elif bad == "nan":
        x = np.zeros(16000, np.float32)
        x[100] = np.nan
        sf.write(p, x, 16000, subtype="FLOAT")
    items.append(AudioItem(key=p.name, labels={"word": "x"}, path=p))
    return AudioDataset(items, ["word"], name=f"bad-{bad}")


@pytest.mark.parametrize("bad", ["corrupt", "empty", "zero-length", "nan"])
def test_bad_audio_names_the_file_and_leaves_no_partial_cache(bad: str, tmp_path: Path) -> None:
    ds = _file_dataset(tmp_path / "audio", bad)
    enc = load_encoder("tiny:wav2vec2")
    cache = tmp_path / "cache"
    with pytest.raises(AudioError, match="bad.wav"):
        extract_features(enc, ds, batch_size=2, cache_dir=cache, progress=False)
    assert not cache.exists() or not any(cache.iterdir()), "no partial cache entry may remain"


def test_option_errors(tmp_path: Path) -> None:
    enc = load_encoder("tiny:wav2vec2")
    ds = make_dataset(2)
    with pytest.raises(LayerIndexError, match="valid states are 0..4"):
        extract_features(enc, ds, layers=[0, 9], cache_dir=tmp_path, progress=False)
    with pytest.raises(SpeechpruneError, match="batch size"):
        extract_features(enc, ds, batch_size=0, cache_dir=tmp_path, progress=False)
    with pytest.raises(SpeechpruneError, match="dtype"):
        extract_features(enc, ds, dtype="fp8", cache_dir=tmp_path, progress=False)
    with pytest.raises(SpeechpruneError, match="segment pooling needs segments"):
        plain = AudioDataset([AudioItem("a", {"w": "1"}, array=np.ones(16000, np.float32), sampling_rate=16000)], ["w"])
        extract_features(enc, plain, pooling="segment", cache_dir=tmp_path, progress=False)


def test_results_are_written_with_ordinary_permissions(tmp_path: Path) -> None:
    from speechprune.utils.io import write_json_atomic

    write_json_atomic(tmp_path / "x.json", {"a": 1})
    mode = (tmp_path / "x.json").stat().st_mode & 0o777
    assert mode & 0o044, f"result files must be readable by others (got {oct(mode)})"
