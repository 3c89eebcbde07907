"""Issue 15, resources: long clips are encoded in chunks (bounded memory), pooled exactly over all chunk frames
where the pooling allows, and refused with the limit and the flag that lifts it where it does not; training and
evaluation refuse clips they would encode whole above 60 s unless --max-seconds cuts them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from _hardening import audiofolder, cli


def _with_long_clip(folder: Path, seconds: float = 5.0, n: int = 4) -> Path:
    data = audiofolder(folder, n=n, seconds=0.75)
    sf.write(folder / "c1.wav", (0.1 * np.random.default_rng(1).standard_normal(int(16000 * seconds) + 77))
             .astype(np.float32), 16000)
    return data


def test_long_clips_are_encoded_in_chunks_and_mean_pooled_over_all_their_frames(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    from speechprune.data.sources import load_data
    from speechprune.features import extract_features
    from speechprune.models import load_encoder

    ds = load_data(str(_with_long_clip(tmp_path / "d")), ["word"])
    enc = load_encoder("tiny:wav2vec2")
    longest: list[int] = []
    prepare = type(enc).prepare

    def spy(self, waves):
        longest.append(max(len(w) for w in waves))
        return prepare(self, waves)

    monkeypatch.setattr(type(enc), "prepare", spy)
    feats = extract_features(enc, ds, cache_dir=tmp_path / "c", progress=False, chunk_seconds=2.0)
    assert max(longest) <= 2 * 16000  # memory bounded by the chunk, not the clip
    wave = ds.load_audio(1)
    total, count = 0, 0
    for start in range(0, len(wave), 32000):
        inputs = enc.prepare([wave[start:start + 32000]])
        n = int(inputs.frame_lengths[0])
        total = total + torch.stack([h[0, :n] for h in enc.hidden_states(inputs)]).sum(1)
        count += n
    np.testing.assert_allclose(feats.states[:, 1], (total / count).numpy(), rtol=1e-5, atol=1e-6)
    assert feats.meta["request"]["chunk_seconds"] == 2.0
    frames = extract_features(enc, ds, cache_dir=tmp_path / "c", progress=False, chunk_seconds=2.0, pooling="frames")
    assert int((frames.item_index == 1).sum()) == count  # every chunk's frames, concatenated


def test_short_clips_keep_their_cache_key_and_numbers(tmp_path: Path) -> None:
    from speechprune.data.sources import load_data
    from speechprune.features import extract_features
    from speechprune.models import load_encoder

    ds = load_data(str(audiofolder(tmp_path / "d", n=4)), ["word"])
    enc = load_encoder("tiny:wav2vec2")
    a = extract_features(enc, ds, cache_dir=tmp_path / "c", progress=False, chunk_seconds=2.0)
    b = extract_features(enc, ds, cache_dir=tmp_path / "c", progress=False, chunk_seconds=None)
    assert a.path == b.path and "chunk_seconds" not in a.meta["request"]


@pytest.mark.parametrize("pooling", ["mean-all", "segment"])
def test_poolings_that_cannot_be_chunked_are_refused_with_the_limit_and_the_flag(tmp_path: Path,
                                                                                 pooling: str) -> None:
    data = _with_long_clip(tmp_path / "d")
    res = cli("extract", "tiny:wav2vec2", str(data), "--pooling", pooling, "--chunk-seconds", "2",
              "--cache-dir", str(tmp_path / "c"), "--no-progress", *(["--segments-dir", "."] if pooling == "segment"
                                                                    else []))
    assert res.code == 2 and "Traceback" not in res.err, res.err
    if pooling == "mean-all":
        line = res.error_lines[0]
        assert "c1.wav" in line and "2 s" in line and "--chunk-seconds" in line
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.safetensors"))


def test_training_refuses_clips_it_would_encode_whole_unless_cut(tmp_path: Path, monkeypatch) -> None:
    import speechprune.data.cliplen as cliplen

    monkeypatch.setattr(cliplen, "MAX_WHOLE_CLIP_SECONDS", 2.0)
    data = _with_long_clip(tmp_path / "d", seconds=3.0, n=12)
    res = cli("finetune", "tiny:wav2vec2", str(data), "-l", "word", "-o", str(tmp_path / "o"), "--no-progress")
    assert res.code == 2 and "c1.wav" in res.error_lines[0] and "--max-seconds" in res.error_lines[0], res.err
    assert not (tmp_path / "o").exists()
