"""Fine-tuning and evaluation: the model learns, a resumed run equals an uninterrupted one, the output reloads with
plain transformers and reproduces its logits, and bad input fails before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from speechprune.data.splits import SplitSpec, make_splits
from speechprune.data.types import AudioDataset, AudioItem
from speechprune.errors import DataError, SpeechpruneError
from speechprune.models import load_encoder
from speechprune.models.classifier import add_classification_head, class_names, classifier_inputs
from speechprune.train.evaluate import classification_metrics, evaluate_classifier, predict_logits
from speechprune.train.finetune import finetune, work_dir_for
from speechprune.train.loop import TrainConfig

FAST = TrainConfig(epochs=3, batch_size=8, lr=2e-3, freeze_front_end=False, seed=0, warmup_ratio=0.0)


def tone_dataset(n: int = 60, classes: int = 3, seed: int = 0) -> AudioDataset:
    """Three classes of noisy tones at clearly different pitches, five 'speakers' as groups."""
    rng = np.random.default_rng(seed)
    t = np.arange(6400) / 16_000
    items = []
    for i in range(n):
        c = i % classes
        f = [300.0, 900.0, 2000.0, 3500.0][c] * (1 + 0.03 * rng.standard_normal())
        length = int(rng.integers(4800, 6400))
        x = 0.5 * np.sin(2 * np.pi * f * t[:length]) + 0.05 * rng.standard_normal(length)
        items.append(AudioItem(key=f"clip{i:03d}", labels={"word": f"w{c}", "speaker": str(i % 5)},
                               group=str(i % 5), array=x.astype(np.float32), sampling_rate=16_000))
    return AudioDataset(items, ["word", "speaker"], group_column="speaker", name="tones")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tones() -> AudioDataset:
    return tone_dataset()


def test_finetune_learns_and_reloads_with_plain_transformers(tones: AudioDataset, tmp_path: Path) -> None:
    enc = load_encoder("tiny:wav2vec2")
    res = finetune(enc, tones, "word", tmp_path / "m", FAST, progress=False, latency_repeats=2)
    hist = res["training"]["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] - 0.05
    assert res["test"]["accuracy"] >= 0.8  # chance is 1/3
    assert res["test"]["cost"]["params_total"] > 0 and res["test"]["cost"]["macs_per_second"] > 0
    # plain transformers, no speechprune code
    model = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "m").eval()
    fe = transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "m")
    wavs = [tones.load_audio(i) for i in range(4)]
    feats = fe(wavs, sampling_rate=16_000, padding=True, return_tensors="pt")
    ours = load_encoder(str(tmp_path / "m"))
    kwargs = classifier_inputs(ours, wavs)
    with torch.no_grad():
        plain = model(input_values=feats["input_values"], attention_mask=feats["attention_mask"]).logits
        mine = ours.model(**kwargs).logits
    torch.testing.assert_close(plain, mine, atol=1e-5, rtol=0)
    assert class_names(ours) == ["w0", "w1", "w2"]
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert saved["accuracy"] == res["test"]["accuracy"]
    assert not work_dir_for(tmp_path / "m").exists()  # the checkpoint folder is cleaned up


def test_resume_after_interruption_gives_identical_metrics(tones: AudioDataset, tmp_path: Path) -> None:
    enc = load_encoder("tiny:hubert")
    full = finetune(enc, tones, "word", tmp_path / "a", FAST, progress=False, latency_repeats=0)
    part = finetune(enc, tones, "word", tmp_path / "b", FAST, progress=False, stop_after_epochs=1)
    assert not part["finished"] and not (tmp_path / "b").exists() and work_dir_for(tmp_path / "b").exists()
    with pytest.raises(SpeechpruneError, match="--resume"):
        finetune(enc, tones, "word", tmp_path / "b", FAST, progress=False)
    resumed = finetune(enc, tones, "word", tmp_path / "b", FAST, progress=False, resume=True, latency_repeats=0)
    a, b = full["training"]["history"], resumed["training"]["history"]
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], abs=1e-6)
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], abs=1e-6)
        assert ra["val_accuracy"] == rb["val_accuracy"]
    assert full["test"]["accuracy"] == resumed["test"]["accuracy"]
    sa = load_encoder(str(tmp_path / "a")).model.state_dict()
    sb = load_encoder(str(tmp_path / "b")).model.state_dict()
    assert max(float((sa[k] - sb[k]).abs().max()) for k in sa) < 1e-6


def test_whisper_classifier_round_trip_and_window(tones: AudioDataset, tmp_path: Path) -> None:
    enc = load_encoder("tiny:whisper", window_seconds=1.0)
    clf = add_classification_head(enc, ["w0", "w1", "w2"], seed=3)
    clf.save_pretrained(tmp_path / "w")
    plain = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "w").eval()
    assert type(plain).__name__ == "WhisperForAudioClassification"
    assert plain.config.max_source_positions == 50
    wavs = [tones.load_audio(i) for i in range(3)]
    kwargs = classifier_inputs(clf, wavs)
    assert kwargs["input_features"].shape[-1] == 100  # 1 s of log-mel frames
    with torch.no_grad():
        torch.testing.assert_close(plain(**kwargs).logits, clf.model(**kwargs).logits, atol=1e-5, rtol=0)
    reloaded = load_encoder(str(tmp_path / "w"))
    np.testing.assert_allclose(predict_logits(reloaded, tones, [0, 1, 2]), predict_logits(clf, tones, [0, 1, 2]),
                               atol=1e-5)


def test_keep_pretrained_head_when_classes_match(tones: AudioDataset, tmp_path: Path) -> None:
    enc = add_classification_head(load_encoder("tiny:wavlm"), ["w0", "w1", "w2"], seed=5)
    head = enc.model.classifier.weight.detach().clone()
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-9, head_lr=1e-9, freeze_encoder=True, seed=0)
    finetune(enc, tones, "word", tmp_path / "m", cfg, progress=False, latency_repeats=0)
    again = load_encoder(str(tmp_path / "m"))
    torch.testing.assert_close(again.model.classifier.weight, head, atol=1e-6, rtol=0)


def test_splits_group_holdout_and_validation(tones: AudioDataset) -> None:
    parts = make_splits(tones, "word", SplitSpec(test_groups=["4"]))
    groups = np.array(tones.groups())
    assert set(groups[parts["test"]]) == {"4"}
    assert "4" not in set(groups[parts["train"]]) | set(groups[parts["validation"]])
    assert len(set(parts["train"]) & set(parts["validation"])) == 0 and len(parts["validation"]) > 0
    vparts = make_splits(tones, "word", SplitSpec(test_groups=["4"], val_groups=["3"]))
    assert set(groups[vparts["validation"]]) == {"3"}


def test_bad_input_is_a_clear_error_and_writes_nothing(tones: AudioDataset, tmp_path: Path) -> None:
    enc = load_encoder("tiny:wav2vec2")
    out = tmp_path / "m"
    with pytest.raises(DataError, match="no label column 'emotion'"):
        finetune(enc, tones, "emotion", out, FAST, progress=False)
    # class w2 only in the held-out group: never seen in training
    items = [it for it in tones.items if not (it.labels["word"] == "w2" and it.group != "4")]
    skewed = AudioDataset(items, tones.label_columns, "speaker", name="skewed")
    with pytest.raises(DataError, match="'w2'.*not in the training split"):
        finetune(enc, skewed, "word", out, FAST, progress=False, split=SplitSpec(test_groups=["4"]))
    with pytest.raises(SpeechpruneError, match="epochs"):
        TrainConfig(epochs=0).validate()
    assert not out.exists() and not work_dir_for(out).exists()
    with pytest.raises(SpeechpruneError, match="nothing to resume"):
        finetune(enc, tones, "word", out, FAST, progress=False, resume=True)


def test_classification_metrics_match_sklearn() -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    m = classification_metrics(y, p, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert m["confusion_matrix"]["matrix"] == confusion_matrix(y, p).tolist()


def test_evaluate_rejects_unknown_classes(tones: AudioDataset) -> None:
    clf = add_classification_head(load_encoder("tiny:wav2vec2"), ["w0", "w1"])
    with pytest.raises(DataError, match="not classes of this model"):
        evaluate_classifier(clf, tones, "word", profile=False)


def test_checkpoint_swap_waits_for_every_process_to_finish_writing(tmp_path: Path, monkeypatch) -> None:
    """accelerate's save_state has no closing barrier, so the main process must wait for the others before it swaps
    checkpoint.tmp into place: a 2-process run lost rank 1's random_states file's folder under it."""
    import speechprune.train.loop as loop
    from speechprune.train.loop import Trainer, TrainerState

    events: list[str] = []

    class Accel:
        is_main_process = True

        def wait_for_everyone(self) -> None:
            events.append("barrier")

        def save_state(self, folder: str, safe_serialization: bool = True) -> None:
            events.append("save_state")
            (Path(folder) / "random_states_0.pkl").write_bytes(b"")

    monkeypatch.setattr(loop, "replace_dir", lambda src, dest: events.append("swap"))
    trainer = Trainer.__new__(Trainer)  # only the checkpoint bookkeeping is exercised
    trainer.work_dir, trainer.cfg = tmp_path, TrainConfig()
    trainer._save(Accel(), TrainerState())
    assert events.index("swap") > events.index("save_state") + 1
    assert "barrier" in events[events.index("save_state"):events.index("swap")]
