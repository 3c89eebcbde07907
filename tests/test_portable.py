"""Every model folder speechprune writes loads with plain transformers (issue 13): finetune (Whisper with a 1 s and a
1.5 s window), prune layers, prune structured and distill outputs of all five families are loaded in a subprocess
that cannot import speechprune, classified with ``pipeline("audio-classification")``, and their logits equal
speechprune's own (atol 1e-5). Non-stock shapes carry Hugging Face custom code; speechprune's loaders never run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent))
from portable_outputs import build_outputs, speechprune_logits  # noqa: E402

HERE = Path(__file__).parent
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    return build_outputs(tmp_path_factory.mktemp("portable"))


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real FSDD clip (0.59 s) where the shared data exist, else a synthetic one."""
    real = HERE.parent.parent / "shared" / "data" / "fsdd" / "wav" / "0_george_1.wav"
    if real.is_file():
        return real
    t = np.arange(9000) / 16_000
    path = tmp_path_factory.mktemp("wav") / "tone.wav"
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000)
    return path


def _needs_remote_code(folder: Path) -> bool:
    return any("auto_map" in json.loads((folder / f).read_text()) for f in ("config.json", "preprocessor_config.json")
               if (folder / f).is_file())


def test_plain_transformers_loads_and_classifies_every_output(outputs, wav, tmp_path: Path) -> None:
    args = [f"{p}:remote" if _needs_remote_code(p) else str(p) for p in outputs.values()]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf-modules")
    proc = subprocess.run([sys.executable, "-I", str(HERE / "plain_transformers_check.py"), str(wav), *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    plain = json.loads(lines[-1][len("RESULT "):])
    wave, _ = sf.read(wav, dtype="float32")
    for name, folder in outputs.items():
        got = plain[str(folder)]
        ours = speechprune_logits(folder, wave)[0]
        np.testing.assert_allclose(got["logits"], ours.numpy(), atol=1e-5, err_msg=name)
        labels = json.loads((folder / "config.json").read_text())["id2label"]
        assert got["pipeline_top"] == labels[str(int(ours.argmax()))], name
    # which outputs needed custom code: only the shapes a stock config cannot describe
    remote = sorted(name for name, p in outputs.items() if _needs_remote_code(p))
    assert remote == sorted([f"{f}-structured" for f in ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper")]
                            + [f"{f}-distill" for f in ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper")]
                            + ["whisper-finetune-w1.5"])
    assert plain[str(outputs["whisper-finetune"])]["fe_n_samples"] == 16_000
    assert plain[str(outputs["whisper-finetune-w1.5"])]["fe_n_samples"] == 24_000
    assert plain[str(outputs["whisper-distill"])]["class"] == "SpeechpruneStudentForAudioClassification"


def test_whisper_feature_extractor_matches_the_window(outputs) -> None:
    for name, window in (("whisper-finetune", 1.0), ("whisper-layers", 1.0), ("whisper-structured", 1.0),
                         ("whisper-distill", 1.0), ("whisper-distill-stock", 1.0), ("whisper-finetune-w1.5", 1.5)):
        fe = json.loads((outputs[name] / "preprocessor_config.json").read_text())
        assert fe["chunk_length"] == window and fe["n_samples"] == int(window * 16_000), name
        assert fe["nb_max_frames"] == int(window * 100), name


def test_speechprune_loads_custom_code_folders_without_running_them(outputs) -> None:
    """Our loaders build the same classes from the package (the copied file is never imported)."""
    from speechprune.compress.distill import load_student
    from speechprune.models import load_encoder

    enc = load_encoder(outputs["whisper-structured"])
    assert type(enc.model).__module__ == "speechprune.models.pruned"  # the same modules as the copied file
    assert json.loads((outputs["whisper-structured"] / "config.json").read_text())["auto_map"] == {
        "AutoModelForAudioClassification": "modeling_speechprune_pruned.WhisperForAudioClassification"}
    student = load_student(outputs["wavlm-distill"])
    assert type(student.mimicker).__module__ == "speechprune.compress.distill.mimickers"
    assert type(load_encoder(outputs["whisper-finetune-w1.5"]).feature_extractor).__module__.startswith(
        "speechprune.portable")
    assert not any("modeling_speechprune" in m and not m.startswith("speechprune") for m in sys.modules)
