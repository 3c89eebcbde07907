"""Layer pruning: the convexity depth rule, removal orders and influence, retained-capacity curves, round trips of
pruned classifiers through plain transformers, and the CLI with its bad-input errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

from speechprune.cli.app import app
from speechprune.compress.layers import (ORDERS, block_influence, choose_depth, removal_curve, removal_order)
from speechprune.data.sources import write_audiofolder
from speechprune.errors import LayerIndexError, SpeechpruneError, UnsupportedModelError
from speechprune.models import load_encoder
from speechprune.models.classifier import add_classification_head, classifier_inputs
from speechprune.train.evaluate import predict_logits
from tests.test_train import tone_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tones():
    return tone_dataset(n=45)


def test_choose_depth_argmax_and_tolerance() -> None:
    scores = {0: 99.0, 1: 40.0, 2: 70.0, 3: 79.5, 4: 80.0, 5: 78.0}
    assert choose_depth(scores).depth == 4  # state 0 is never a depth
    assert choose_depth(scores, tolerance=1.0).depth == 3
    assert choose_depth(scores, tolerance=10.5).depth == 2
    assert choose_depth([0.0, 5.0, 5.0, 1.0]).depth == 1  # ties: the shallowest
    with pytest.raises(SpeechpruneError):
        choose_depth({0: 1.0, 1: float("nan")})
    with pytest.raises(SpeechpruneError):
        choose_depth(scores, tolerance=-1)


def test_removal_orders() -> None:
    assert removal_order("backward", 5) == [5, 4, 3, 2]
    assert removal_order("forward", 5) == [2, 3, 4, 5]
    bi = {1: 0.0, 2: 0.5, 3: 0.1, 4: 0.3, 5: 0.1}
    assert removal_order("block-influence", 5, bi) == [3, 5, 4, 2]  # layer 1 is never removed; ties by index
    with pytest.raises(SpeechpruneError, match="unknown removal order"):
        removal_order("random", 5)
    with pytest.raises(SpeechpruneError, match="influence"):
        removal_order("knn-block-influence", 5)


def test_block_influence_finds_a_layer_that_does_nothing(tones) -> None:
    enc = load_encoder("tiny:wav2vec2")
    layer = enc.layers[2]  # layer 3: make it (almost) the identity
    with torch.no_grad():
        layer.attention.out_proj.weight.zero_(); layer.attention.out_proj.bias.zero_()
        layer.feed_forward.output_dense.weight.zero_(); layer.feed_forward.output_dense.bias.zero_()
        layer.layer_norm.weight.fill_(1.0); layer.layer_norm.bias.zero_()
        layer.final_layer_norm.weight.fill_(1.0); layer.final_layer_norm.bias.zero_()
    infl = block_influence(enc, tones, list(range(30)))
    bi, kbi = infl["block-influence"], infl["knn-block-influence"]
    assert bi[3] < 0.05 and bi[3] == min(bi.values())
    assert kbi[3] == min(kbi.values())
    assert removal_order("block-influence", 4, bi)[0] == 3


def test_removal_curve_zero_removed_is_the_model_itself(tones) -> None:
    clf = add_classification_head(load_encoder("tiny:wav2vec2"), ["w0", "w1", "w2"], seed=1)
    direct = predict_logits(clf, tones, list(range(12)))
    same = clf.select_layers(list(range(1, clf.num_layers + 1)))
    np.testing.assert_array_equal(predict_logits(same, tones, list(range(12))), direct)
    rows = removal_curve(clf, tones, "word", [4, 3, 2], list(range(12)), order_name="backward")
    assert [r["removed"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["retained"] == 1.0 and rows[0]["macs_fraction"] == 1.0
    acc0 = float((direct.argmax(1) == np.array([int(v[1]) for v in tones.labels("word")[:12]])).mean())
    assert rows[0]["accuracy"] == pytest.approx(acc0)
    assert rows[-1]["kept_layers"] == "1" and rows[1]["macs_fraction"] < 1.0
    macs = [r["macs"] for r in rows]
    assert macs == sorted(macs, reverse=True)


@pytest.mark.parametrize("family", ["wav2vec2", "wavlm", "whisper"])
def test_pruned_classifier_reloads_plainly_and_shrinks(family: str, tones, tmp_path: Path) -> None:
    enc = load_encoder(f"tiny:{family}", window_seconds=1.0 if family == "whisper" else None)
    clf = add_classification_head(enc, ["w0", "w1", "w2"], seed=2)
    clf.save_pretrained(tmp_path / "full")
    pruned = clf.drop_layers([1, 3]) if family == "wavlm" else clf.keep_layers(2)
    pruned.save_pretrained(tmp_path / "pruned")
    plain = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "pruned").eval()
    wavs = [tones.load_audio(i) for i in range(3)]
    kwargs = classifier_inputs(pruned, wavs)
    with torch.no_grad():
        torch.testing.assert_close(plain(**kwargs).logits, pruned.model(**kwargs).logits, atol=1e-5, rtol=0)
    per_layer = sum(t.numel() for t in clf.layers[1].parameters()) * 4
    removed = clf.num_layers - pruned.num_layers
    # tensor bytes shrink by exactly the removed layers; the file by that plus their header entries
    assert _tensor_bytes(tmp_path / "full") - _tensor_bytes(tmp_path / "pruned") == removed * per_layer
    size = lambda p: (p / "model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "full") - size(tmp_path / "pruned") == pytest.approx(removed * per_layer, rel=0.1)


def _tensor_bytes(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())


def test_bad_layer_requests() -> None:
    enc = load_encoder("tiny:wav2vec2")
    for k in (0, enc.num_layers + 1):
        with pytest.raises(LayerIndexError):
            enc.keep_layers(k)
    with pytest.raises(LayerIndexError):
        enc.drop_layers([0])
    with pytest.raises(UnsupportedModelError):
        load_encoder("tiny:conformer")


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_cli_finetune_evaluate_prune(tones, tmp_path: Path) -> None:
    data = write_audiofolder(tones, tmp_path / "data")
    ft = tmp_path / "ft"
    r = _cli("finetune", "tiny:wav2vec2", str(data), "-l", "word", "-o", str(ft), "--epochs", "3", "--lr", "2e-3",
             "--no-freeze-front-end", "--group", "speaker", "--test-groups", "4", "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads((ft / "training.json").read_text())["split_spec"]["test_groups"] == ["4"]
    ev = tmp_path / "eval.json"
    r = _cli("evaluate", str(ft), str(data), "-l", "word", "--latency-repeats", "2", "-o", str(ev))
    assert r.exit_code == 0, r.output
    res = json.loads(ev.read_text())
    assert res["n"] == 9 and res["split_spec"]["test_groups"] == ["4"]  # the recorded split, not a new one
    assert res["accuracy"] == json.loads((ft / "metrics.json").read_text())["accuracy"]
    assert res["cost"]["macs_per_second"] > 0 and res["cost"]["latency_ms_median"] > 0
    r = _cli("prune", "layers", str(ft), "-o", str(tmp_path / "k2"), "--keep", "2")
    assert r.exit_code == 0, r.output
    assert transformers.AutoConfig.from_pretrained(tmp_path / "k2").num_hidden_layers == 2
    r = _cli("prune", "layers", str(ft), "-o", str(tmp_path / "rm"), "--no-retrain", "--data", str(data),
             "-l", "word", "--no-progress")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "rm" / "removal.csv")))
    assert {row["order"] for row in rows} == set(ORDERS)
    assert all(float(row["test_accuracy"]) == res["accuracy"] for row in rows if row["removed"] == "0")
    assert "retained on validation (n = " in r.output and "reported only" in r.output
    assert (tmp_path / "rm" / "removal.png").stat().st_size > 1000
    r = _cli("prune", "layers", "tiny:wav2vec2", "-o", str(tmp_path / "cx"), "--by", "convexity", "--data",
             str(data), "-l", "word", "--no-progress")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "cx" / "speechprune.json").read_text())["layer_pruning"]
    layer_scores = {int(k): v for k, v in meta["scores"].items() if int(k) >= 1}
    best = max(layer_scores.values())
    assert meta["by"] == "convexity" and meta["depth"] == min(k for k, v in layer_scores.items() if v == best)
    assert transformers.AutoConfig.from_pretrained(tmp_path / "cx").num_hidden_layers == meta["depth"]


def test_no_retrain_chooses_on_validation_only(tones, tmp_path: Path) -> None:
    """prune layers --no-retrain: validation and test curves apart, the removable depth read from validation only
    (shuffling the test labels changes test numbers, never the choice), test with its interval and n."""
    from speechprune.compress.layers import remove_without_retraining
    from speechprune.data.splits import SplitSpec
    from tests.test_pipeline_discipline import shuffled_test_labels

    clf = add_classification_head(load_encoder("tiny:wav2vec2"), ["w0", "w1", "w2"], seed=1)
    spec = SplitSpec(test_groups=["4"], val_fraction=0.3, seed=0, group_column="speaker")
    runs = {}
    for tag, ds in (("true", tones), ("shuffled", shuffled_test_labels(tones, "4", seed=3))):
        runs[tag] = remove_without_retraining(clf, ds, "word", spec, ["backward", "block-influence"], tmp_path / tag,
                                              batch_size=8, profile_seconds=1.0, influence_clips=20, progress=False,
                                              min_retained=0.9)
    true, shuffled = runs["true"], runs["shuffled"]
    assert true["chosen_on"] == "validation"
    assert {o: c["removed"] for o, c in true["chosen"].items()} == {o: c["removed"] for o, c in
                                                                   shuffled["chosen"].items()}
    val = lambda s: [(r["order"], r["removed"], r["val_accuracy"]) for r in s["rows"]]  # noqa: E731
    test = lambda s: [r["test_accuracy"] for r in s["rows"]]  # noqa: E731
    assert val(true) == val(shuffled) and test(true) != test(shuffled)
    for r in true["rows"]:
        assert r["n_test"] == 9 and r["n_validation"] == true["n"]["validation"] > 0
        assert r["test_accuracy_low"] <= r["test_accuracy"] <= r["test_accuracy_high"]
    for o, c in true["chosen"].items():
        ok = [r["removed"] for r in true["rows"] if r["order"] == o and r["val_retained"] >= 0.9]
        assert c["removed"] == max(ok)
    assert not true["validation"]["ok"] and "too small" in true["validation"]["note"]
    # the rule itself, where validation and test disagree: test never moves the depth
    from speechprune.compress.layers import chosen_removal

    rows = [{"order": "o", "removed": r, "removed_layers": "", "val_retained": v, "test_retained": t}
            for r, (v, t) in enumerate([(1.0, 1.0), (0.97, 0.5), (0.9, 1.0), (0.8, 1.0)])]
    assert chosen_removal(rows, "o", 0.95)["removed"] == 1
    assert (tmp_path / "true" / "removal.png").stat().st_size > 1000


def test_cli_bad_input_fails_cleanly(tones, tmp_path: Path) -> None:
    from speechprune.cli.app import main  # noqa: F401  (errors are SpeechpruneError subclasses)

    data = write_audiofolder(tones, tmp_path / "data")
    runner = CliRunner()
    cases = [
        (["prune", "layers", "tiny:wav2vec2", "-o", str(tmp_path / "a"), "--keep", "0"], "cannot keep 0 layers"),
        (["prune", "layers", "tiny:wav2vec2", "-o", str(tmp_path / "a"), "--keep", "9"], "cannot keep 9 layers"),
        (["prune", "layers", "tiny:wav2vec2", "-o", str(tmp_path / "a"), "--keep", "2", "--drop", "3"], "exactly one"),
        (["prune", "layers", "tiny:wav2vec2", "-o", str(tmp_path / "a"), "--no-retrain", "--data", str(data), "-l",
          "word"], "no classification head"),
        (["finetune", "tiny:wav2vec2", str(data), "-l", "emotion", "-o", str(tmp_path / "a")], "emotion"),
    ]
    for args, msg in cases:
        r = runner.invoke(app, args)
        assert r.exit_code != 0
        assert isinstance(r.exception, (SpeechpruneError, SystemExit)), r.exception
        text = str(r.exception) + r.output
        assert msg in text, (args, text)
        assert not (tmp_path / "a").exists()
