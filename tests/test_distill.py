"""Distillation into mimicking layers (issue 5) on tiny random models: stage 1 learns, an identity stack is
mimicked almost exactly, a frozen mimicker stays frozen, exported students reload exactly, analytic MACs match the
FLOP counter, resume reproduces an uninterrupted run, and bad input fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from speechprune.compress.distill import (
    DistillConfig,
    build_student,
    distill,
    load_student,
    student_config,
    teacher_targets,
)
from speechprune.compress.distill.evaluate import dummy_student_inputs, flop_counter_macs
from speechprune.data.types import AudioDataset, AudioItem
from speechprune.errors import LayerIndexError, SpeechpruneError
from speechprune.models import load_encoder
from speechprune.models.classifier import add_classification_head
from speechprune.train.loop import TrainConfig

torch.set_num_threads(1)
CLASSES = ["w0", "w1", "w2"]


def _dataset(n: int = 48, seconds: float = 0.5) -> AudioDataset:
    rng = np.random.default_rng(0)
    items = []
    t = np.arange(int(seconds * 16_000)) / 16_000
    for i in range(n):
        c = i % 3
        f = [300, 900, 2000][c] * (1 + 0.05 * rng.standard_normal())
        x = (0.5 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
        items.append(AudioItem(key=f"c{i}", labels={"word": f"w{c}"}, group=str(i % 4), array=x, sampling_rate=16000))
    return AudioDataset(items, ["word"], name=f"toy{n}")


@pytest.fixture(scope="module")
def data() -> AudioDataset:
    return _dataset()


@pytest.fixture(scope="module")
def whisper_teacher():
    return add_classification_head(load_encoder("tiny:whisper", window_seconds=0.5), CLASSES)


@pytest.fixture(scope="module")
def w2v2_teacher():
    return add_classification_head(load_encoder("tiny:wav2vec2"), CLASSES)


def _cfg(kind: str = "mlp", *, e1: int = 3, e2: int = 2, lr: float = 1e-3, **kw) -> DistillConfig:
    stage = lambda e: TrainConfig(epochs=e, batch_size=8, lr=lr, schedule="constant", warmup_ratio=0.0,  # noqa: E731
                                  max_grad_norm=None)
    return DistillConfig(mimicker=kind, hidden=kw.pop("hidden", 16), blocks=kw.pop("blocks", 2), stage1=stage(e1),
                         stage2=stage(e2), **kw)


def test_stage1_loss_falls_and_targets_are_cached(whisper_teacher, data, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    res = distill(whisper_teacher, data, "word", tmp_path / "s", _cfg("mlp", e1=4, intermediate=2), progress=False,
                  cache_dir=cache)
    hist = [h["val_loss"] for h in res["stage1"]["history"]]
    assert hist[-1] < hist[0] * 0.9, hist
    train = [h["train_loss"] for h in res["stage1"]["history"]]
    assert train[-1] < train[0]
    # the teacher pass is cached: a second student never runs the teacher
    calls = []
    orig = whisper_teacher.hidden_states
    whisper_teacher.hidden_states = lambda *a, **k: calls.append(1) or orig(*a, **k)  # type: ignore[method-assign]
    try:
        t = teacher_targets(whisper_teacher, data, intermediate=2, cache_dir=cache, progress=False)
    finally:
        del whisper_teacher.hidden_states
    assert not calls and t.intermediate is not None and len(t) == len(data)
    # targets are what the head sees: the teacher's final-normed last state, every window frame (Whisper)
    st = whisper_teacher.hidden_states([data.load_audio(0)], final_norm=True)[-1][0]
    assert torch.allclose(t.last[t.clip(0)], st, atol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_identity_stack_is_mimicked_almost_exactly(data, tmp_path: Path, kind: str) -> None:
    enc = add_classification_head(load_encoder("tiny:whisper", window_seconds=0.5), CLASSES)
    with torch.no_grad():  # zero every residual branch: the stack is the identity, the target LN(front + positions)
        for layer in enc.layers:
            for m in (layer.self_attn.out_proj, layer.fc2):
                m.weight.zero_()
                m.bias.zero_()
    cfg = _cfg(kind, e1=30, e2=1, lr=3e-3, hidden=64 if kind == "mlp" else 32, blocks=1)
    res = distill(enc, data, "word", tmp_path / "s", cfg, progress=False, cache_dir=tmp_path / "c", evaluate_test=False)
    var = float(teacher_targets(enc, data, cache_dir=tmp_path / "c", progress=False).last.var())
    first = res["stage1"]["history"][0]["val_loss"] / var
    assert res["stage1"]["test_mse"] / var < 0.005, (first, res["stage1"]["test_mse"] / var)


@pytest.mark.parametrize("freeze", [True, False])
def test_stage2_freezing_and_resume(whisper_teacher, data, tmp_path: Path, freeze: bool) -> None:
    cfg = _cfg("mlp", e1=2, e2=3, freeze_mimicker=freeze)
    out = tmp_path / "s"
    part = distill(whisper_teacher, data, "word", out, cfg, progress=False, cache_dir=tmp_path / "c",
                   stop_after=(2, 1))
    assert part["finished"] is False and not out.exists()
    work = out.parent / f".{out.name}.training"
    after_stage1 = {k[len("mimicker."):]: v for k, v in load_file(str(work / "stage1.safetensors")).items()
                    if k.startswith("mimicker.")}
    res = distill(whisper_teacher, data, "word", out, cfg, progress=False, cache_dir=tmp_path / "c", resume=True)
    final = load_student(out).mimicker.state_dict()
    same = all(torch.equal(after_stage1[k], v) for k, v in final.items())
    assert same is freeze and res["mimicker_unchanged_in_stage2"] is freeze
    # an uninterrupted run ends with the same student
    ref = distill(whisper_teacher, data, "word", tmp_path / "ref", cfg, progress=False, cache_dir=tmp_path / "c")
    a = load_student(out).state_dict()
    b = load_student(tmp_path / "ref").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert res["test"]["accuracy"] == ref["test"]["accuracy"]


@pytest.mark.parametrize("family,kind,fmt", [("whisper", "mlp", "speechprune"), ("whisper", "transformer", "stock"),
                                             ("whisper", "none", "stock"), ("wav2vec2", "mlp", "speechprune"),
                                             ("wav2vec2", "transformer", "speechprune")])
def test_export_reloads_and_reproduces_logits(whisper_teacher, w2v2_teacher, data, tmp_path: Path, family: str,
                                              kind: str, fmt: str) -> None:
    teacher = whisper_teacher if family == "whisper" else w2v2_teacher
    res = distill(teacher, data, "word", tmp_path / "s", _cfg(kind, e1=1, e2=1), progress=False,
                  cache_dir=tmp_path / "c")
    assert res["saved_as"] == fmt
    assert not any(p.suffix in (".bin", ".pt", ".pkl", ".pth") for p in (tmp_path / "s").iterdir())
    student = load_student(tmp_path / "s")
    # the in-memory student the run ended with, rebuilt from the config + the saved weights of its parts
    waves = [data.load_audio(i) for i in range(5)]
    logits = student.predict(waves)
    again = load_student(tmp_path / "s").predict(waves)
    assert torch.equal(logits, again)
    saved_acc = json.loads((tmp_path / "s" / "metrics.json").read_text())["accuracy"]
    y = np.array([int(data.items[i].labels["word"][1]) for i in range(len(data))])
    from speechprune.compress.distill.evaluate import student_logits
    from speechprune.data.splits import SplitSpec, make_splits

    test = make_splits(data, "word", SplitSpec())["test"]
    acc = float((student_logits(student, data, test).argmax(1) == y[test]).mean())
    assert acc == saved_acc
    if fmt == "stock":  # also a plain transformers model, with the same logits
        import transformers

        model = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "s").eval()
        with torch.no_grad():
            ref = model(**student.prepare(waves)).logits
        assert torch.allclose(ref, logits, atol=1e-5)
        assert load_encoder(str(tmp_path / "s")).num_layers == (2 if kind == "transformer" else 0)


def test_exported_student_is_bit_exact(whisper_teacher, data, tmp_path: Path) -> None:
    from speechprune.compress.distill import save_student

    student = build_student(whisper_teacher, student_config(whisper_teacher, "mlp", 8, 2))
    torch.manual_seed(1)
    for p in student.mimicker.parameters():
        p.data.normal_()
    save_student(student, tmp_path / "x", feature_extractor=whisper_teacher.feature_extractor)
    waves = [data.load_audio(i) for i in range(3)]
    with torch.no_grad():
        assert torch.equal(student.predict(waves), load_student(tmp_path / "x").predict(waves))


@pytest.mark.parametrize("family,kind", [("whisper", "mlp"), ("whisper", "transformer"), ("whisper", "none"),
                                         ("wav2vec2", "mlp"), ("wav2vec2", "transformer"), ("wav2vec2", "none")])
def test_analytic_macs_match_flop_counter(whisper_teacher, w2v2_teacher, family: str, kind: str) -> None:
    teacher = whisper_teacher if family == "whisper" else w2v2_teacher
    student = build_student(teacher, student_config(teacher, kind, 24, 2))
    for seconds in (1.0, 0.7):
        num = round(seconds * 16_000)
        counted = flop_counter_macs(student, dummy_student_inputs(student, seconds))
        assert student.mac_breakdown(num)["total"] == counted


def test_student_is_much_smaller_than_the_teacher(whisper_teacher) -> None:
    from speechprune.compress.distill import student_cost

    student = build_student(whisper_teacher, student_config(whisper_teacher, "mlp", 8, 1))
    cost = student_cost(student, whisper_teacher)
    assert cost["stack_params_fraction"] < 0.1 and cost["mac_gain"] > 1
    assert cost["params_stack"] == sum(p.numel() for p in student.mimicker.parameters())


def test_bad_input_is_a_clear_error(whisper_teacher, data, tmp_path: Path) -> None:
    bare = load_encoder("tiny:whisper", window_seconds=0.5)
    with pytest.raises(SpeechpruneError, match="no classification head"):
        distill(bare, data, "word", tmp_path / "a", _cfg(), progress=False)
    with pytest.raises(LayerIndexError, match="out of range"):
        distill(whisper_teacher, data, "word", tmp_path / "b", _cfg(intermediate=4), progress=False)
    with pytest.raises(LayerIndexError, match="out of range"):
        student_config(whisper_teacher, "mlp", 8, 2, intermediate=0)
    for h in (0, -3):
        with pytest.raises(SpeechpruneError, match="hidden size"):
            distill(whisper_teacher, data, "word", tmp_path / "c", _cfg(hidden=h), progress=False)
    with pytest.raises(SpeechpruneError, match="1 or 2 blocks"):
        student_config(whisper_teacher, "mlp", 8, 3)
    with pytest.raises(SpeechpruneError, match="mimicker must be one of"):
        student_config(whisper_teacher, "lstm", 8, 2)
    with pytest.raises(SpeechpruneError, match="2 blocks"):
        student_config(whisper_teacher, "mlp", 8, 1, intermediate=2)
    assert not (tmp_path / "a").exists() and not (tmp_path / ".a.training").exists()
