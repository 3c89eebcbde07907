"""Saving and loading distilled students — safetensors and JSON only, never pickle.

Two formats, chosen by :func:`save_student`:

* **stock transformers** — when the student is the same family with fewer/smaller layers, it is saved as that
  family's stock classification model, loadable with plain
  ``transformers.AutoModelForAudioClassification.from_pretrained`` or :func:`speechprune.models.load_encoder`.
  This is the case for Whisper students with a transformer mimicker (pre-norm blocks + final LayerNorm are exactly
  ``WhisperEncoderLayer`` s with ``encoder_ffn_dim = h``) and for the Whisper no-mimicker baseline (a 0-layer
  encoder: front end + positions + final LayerNorm + head), both with the position table on. The conversion is
  checked numerically before it is written; if it does not reproduce the student it falls back to the other format.
* **speechprune student** — everything else (MLP mimickers; any wav2vec2-family student, whose stock model would
  have to keep the positional convolution): ``model.safetensors`` (the student's weights),
  ``speechprune_student.json`` (the student's config: teacher config for the front end, mimicker spec, classes)
  and the feature extractor's ``preprocessor_config.json``; plus ``config.json`` with an ``auto_map`` and the
  standalone modeling files of :mod:`speechprune.portable`, so that plain transformers loads it too
  (``AutoModelForAudioClassification.from_pretrained(path, trust_remote_code=True)``). Load it with::

      from speechprune.compress.distill import load_student
      student = load_student("students/fsdd-mlp64")
      logits = student.predict([waveform_16k_float32, ...])   # or student(**student.prepare(waves)).logits

Both folders hold ``speechprune_student.json`` so :func:`load_student` reads either into a
:class:`~speechprune.compress.distill.student.StudentClassifier`.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import transformers

from speechprune.compress.distill.front_ends import WhisperFrontEnd
from speechprune.compress.distill.student import StudentClassifier
from speechprune.errors import SpeechpruneError
from speechprune.utils.io import atomic_dir, write_json_atomic

CONFIG_FILE = "speechprune_student.json"
WEIGHTS_FILE = "model.safetensors"


def stock_expressible(student: StudentClassifier) -> bool:
    """Whether the student is a stock transformers model of its family (see the module docstring)."""
    spec = student.spec
    if not isinstance(student.front_end, WhisperFrontEnd) or not student.use_positions:
        return False
    if spec.kind == "none":
        return spec.final_norm
    return spec.kind == "transformer" and spec.norm_first and spec.final_norm


def to_stock(student: StudentClassifier) -> torch.nn.Module:
    """The student as a ``WhisperForAudioClassification`` with ``encoder_layers`` = mimicker blocks."""
    if not stock_expressible(student):
        raise SpeechpruneError("this student has no stock transformers equivalent "
                               "(see speechprune.compress.distill.export)")
    spec = student.spec
    tc = copy.deepcopy(student.config["teacher_config"])
    tc.update(encoder_layers=spec.num_blocks, architectures=["WhisperForAudioClassification"],
              use_weighted_layer_sum=False, classifier_proj_size=student.projector.out_features,
              num_labels=len(student.classes), id2label=dict(enumerate(student.classes)),
              label2id={c: i for i, c in enumerate(student.classes)})
    if spec.kind == "transformer":
        tc.update(encoder_ffn_dim=spec.hidden, encoder_attention_heads=spec.nhead)
    config = transformers.WhisperConfig(**tc)
    model = transformers.WhisperForAudioClassification(config).eval()
    enc, fe = model.encoder, student.front_end
    enc.conv1.load_state_dict(fe.conv1.state_dict())
    enc.conv2.load_state_dict(fe.conv2.state_dict())
    enc.embed_positions.weight.data.copy_(fe.embed_positions.data)
    for i, block in enumerate(student.mimicker.blocks):
        missing, unexpected = enc.layers[i].load_state_dict(block.state_dict(), strict=False)
        if missing or unexpected:
            raise SpeechpruneError(f"cannot map mimicker block {i} onto a Whisper layer: {missing} {unexpected}")
    enc.layer_norm.load_state_dict(student.mimicker.final_norm.state_dict())
    model.projector.load_state_dict(student.projector.state_dict())
    model.classifier.load_state_dict(student.classifier.state_dict())
    return model


def from_stock(model: torch.nn.Module, config: dict[str, Any]) -> StudentClassifier:
    """Inverse of :func:`to_stock`."""
    student = StudentClassifier(config)
    enc, fe = model.encoder, student.front_end
    fe.conv1.load_state_dict(enc.conv1.state_dict())
    fe.conv2.load_state_dict(enc.conv2.state_dict())
    fe.embed_positions.data.copy_(enc.embed_positions.weight.data)
    for i, block in enumerate(student.mimicker.blocks):
        block.load_state_dict(enc.layers[i].state_dict(), strict=True)
    student.mimicker.final_norm.load_state_dict(enc.layer_norm.state_dict())
    student.projector.load_state_dict(model.projector.state_dict())
    student.classifier.load_state_dict(model.classifier.state_dict())
    return student.eval()


def save_student(
    student: StudentClassifier,
    path: str | Path,
    *,
    feature_extractor: Any | None = None,
    extra_json: dict[str, Any] | None = None,
    prefer_stock: bool = True,
    tolerance: float = 1e-4,
) -> str:
    """Save ``student`` to ``path`` atomically; returns ``"stock"`` or ``"speechprune"`` (the format used)."""
    from safetensors.torch import save_model

    fmt = "speechprune"
    with atomic_dir(path) as tmp:
        config = {**student.config, "saved_as": fmt}
        if prefer_stock and stock_expressible(student):
            model = to_stock(student)
            if _agree(student, model, tolerance):
                from speechprune.models.io import save_encoder
                from speechprune.models.loading import wrap_model

                fmt = config["saved_as"] = "stock"
                shutil.rmtree(tmp)
                save_encoder(wrap_model(model, copy.deepcopy(feature_extractor)), tmp,
                             metadata={"distilled_student": {"mimicker": student.spec.to_dict()}})
        if fmt == "speechprune":
            from speechprune.models.io import save_feature_extractor
            from speechprune.portable import write_student_config

            save_model(student, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            window = student.front_end.window_positions if student.family == "whisper" else None
            save_feature_extractor(feature_extractor, tmp, student.family, window)
            write_student_config(tmp, config)  # config.json + custom code: plain transformers loads the folder too
        write_json_atomic(tmp / CONFIG_FILE, config)
        for name, obj in (extra_json or {}).items():
            write_json_atomic(tmp / name, obj)
    return fmt


@torch.no_grad()
def _agree(student: StudentClassifier, model: torch.nn.Module, tolerance: float) -> bool:
    gen = torch.Generator().manual_seed(0)
    fe = student.front_end
    x = torch.randn(2, fe.conv1.in_channels, fe.window_positions * 2, generator=gen)
    a = student.eval()(input_features=x).logits
    b = model.eval()(input_features=x).logits
    return bool(torch.allclose(a, b, atol=tolerance, rtol=tolerance))


def load_student(path: str | Path) -> StudentClassifier:
    """Load a student saved by :func:`save_student` (either format). No pickle is involved: weights are
    safetensors, configs JSON. The feature extractor (if saved) is attached as ``student.feature_extractor``."""
    from safetensors.torch import load_model

    p = Path(path)
    cfg_file = p / CONFIG_FILE
    if not cfg_file.is_file():
        raise SpeechpruneError(f"{p} is not a distilled student: no {CONFIG_FILE}")
    config = json.loads(cfg_file.read_text())
    if config.get("format") != "speechprune-student":
        raise SpeechpruneError(f"{cfg_file}: unknown format {config.get('format')!r}")
    if config.get("saved_as") == "stock":
        model = transformers.WhisperForAudioClassification.from_pretrained(p, attn_implementation="eager").eval()
        student = from_stock(model, config)
    else:
        student = StudentClassifier(config)
        missing, unexpected = load_model(student, str(p / WEIGHTS_FILE), strict=True)
        if missing or unexpected:  # pragma: no cover - strict raises first
            raise SpeechpruneError(f"{p}: weights do not fit the config: {missing} {unexpected}")
    from speechprune.models.io import load_feature_extractor

    student.eval()
    student.feature_extractor = load_feature_extractor(p)
    return student
