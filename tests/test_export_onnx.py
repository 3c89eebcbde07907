"""``speechprune export onnx`` (issue 13): every kind of folder speechprune writes exports to ONNX and ORT fp32 logits
stay within 1e-4 of torch; int8 quantizes MatMul/Gemm only (convolutions fp32); verification on real clips and
interleaved latency land in export.json; bad input (not a model, unsupported opset, missing onnxruntime) is one
clear error with nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from portable_outputs import build_outputs  # noqa: E402

from speechprune.deploy import export_onnx  # noqa: E402
from speechprune.errors import SpeechpruneError  # noqa: E402

pytest.importorskip("onnxruntime", reason="the onnx extra (pip install 'speechprune[onnx]') is not installed")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    return build_outputs(tmp_path_factory.mktemp("onnx-models"))


@pytest.mark.slow
def test_every_output_exports_and_ort_matches_torch(outputs, tmp_path: Path) -> None:
    for name, folder in outputs.items():
        res = export_onnx(folder, tmp_path / name, latency_repeats=0)
        assert res["check"]["max_abs_logit_diff"]["fp32"] < 1e-4, name
        assert res["opset"] == 17 and (tmp_path / name / "model.onnx").is_file()
        expected = ["input_features"] if name.startswith("whisper") else ["input_values", "attention_mask"]
        assert res["inputs"] == expected, name


def test_int8_verification_and_latency_on_clips(outputs, tmp_path: Path) -> None:
    import onnx

    from speechprune.data.types import AudioDataset, AudioItem

    rng = np.random.default_rng(0)
    items = [AudioItem(key=f"c{i}", labels={"word": ["zero", "one", "two"][i % 3]}, group=None,
                       array=(0.1 * rng.standard_normal(int(rng.integers(6000, 16000)))).astype(np.float32),
                       sampling_rate=16_000) for i in range(6)]
    ds = AudioDataset(items, ["word"], name="noise")
    res = export_onnx(outputs["wav2vec2-structured"], tmp_path / "o", quantize="int8", dataset=ds, label="word",
                      latency_repeats=2, batch_size=4)
    v = res["verification"]
    assert v["n"] == 6 and set(v["variants"]) == {"torch", "fp32", "int8"}
    assert v["variants"]["fp32"]["max_abs_logit_diff"] < 1e-4 and v["variants"]["fp32"]["top1_agreement"] == 1.0
    lat = res["latency"]
    assert set(lat["ms_median"]) == {"torch", "fp32", "int8"} and lat["threads"] == 1 and lat["interleaved"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "o" / "model.int8.onnx")).graph.node}
    assert "Conv" in ops and ("MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops)
    assert not any("ConvInteger" in op for op in ops)  # convolutions stay fp32
    saved = json.loads((tmp_path / "o" / "export.json").read_text())
    assert saved["size_bytes"]["int8"] < saved["size_bytes"]["fp32"]
    assert (tmp_path / "o" / "preprocessor_config.json").is_file()


def _main(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """The real console entry point (SpeechpruneError → one red line, exit 2)."""
    from speechprune.cli.app import main

    monkeypatch.setattr(sys, "argv", ["speechprune", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code, captured.err + captured.out


def test_bad_input_is_one_clear_error_and_writes_nothing(outputs, tmp_path: Path, monkeypatch, capsys) -> None:
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hello")
    cases = [
        ([str(not_a_model), str(tmp_path / "a")], "not a model folder"),
        ([str(outputs["whisper-finetune"]), str(tmp_path / "b"), "--opset", "9"], "unsupported ONNX opset 9"),
    ]
    for args, message in cases:
        code, text = _main(["export", "onnx", *args], monkeypatch, capsys)
        assert code == 2 and message in text and "Traceback" not in text, text
        assert not Path(args[1]).exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    code, text = _main(["export", "onnx", str(outputs["whisper-finetune"]), str(tmp_path / "c")], monkeypatch, capsys)
    assert code == 2 and "pip install 'speechprune[onnx]'" in text, text
    assert not (tmp_path / "c").exists()
    with pytest.raises(SpeechpruneError, match="onnxruntime"):
        export_onnx(outputs["whisper-finetune"], tmp_path / "d")
    assert not (tmp_path / "d").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no temporary folder left behind either
