"""Model folders of every kind speechprune writes, built fast on tiny random configs through the same save paths the
commands use (``finetune``/``prune layers``: ``SpeechEncoder.save_pretrained``; ``prune structured``:
``prune_model`` + ``save_encoder``; ``distill``: ``save_student``). Shared by the portability and ONNX tests."""

from __future__ import annotations

from pathlib import Path

import torch

from speechprune.compress.distill import build_student, student_config
from speechprune.compress.distill.export import save_student
from speechprune.compress.structured.cost import gate_name
from speechprune.compress.structured.prune import prune_model
from speechprune.compress.structured.sites import find_sites
from speechprune.models import load_encoder, wrap_model
from speechprune.models.classifier import add_classification_head

FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper")
CLASSES = ["zero", "one", "two"]


def classifier(family: str, window: float | None = 1.0):
    enc = load_encoder(f"tiny:{family}", window_seconds=window if family == "whisper" else None)
    clf = add_classification_head(enc, CLASSES, seed=1)
    with torch.no_grad():  # a head that is not near zero, so that logits differ between classes
        for p in (*clf.model.projector.parameters(), *clf.model.classifier.parameters()):
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    return clf


def structured(clf):
    """Per-layer heads and FFN widths (one layer loses all heads), some conv channels, soft values folded in."""
    sites = find_sites(clf.model)
    masks: dict[str, torch.Tensor] = {}
    for site in sites.layers:
        heads = torch.ones(site.num_heads) * 0.8
        if site.number == 1:
            heads[0] = 0.0
        if site.number == 2:
            heads[:] = 0.0
        masks[gate_name("head", site.number)] = heads
        units = torch.ones(site.ffn_dim) * 0.9
        units[: site.number * 5] = 0.0
        masks[gate_name("interm", site.number)] = units
    conv = torch.ones(sites.convs[0].channels)
    conv[:3] = 0.0
    masks[gate_name("conv", 0)] = conv
    pruned = prune_model(clf.model, sites, masks)
    return wrap_model(pruned, clf.feature_extractor, source=clf.source)


def build_outputs(root: Path, families: tuple[str, ...] = FAMILIES) -> dict[str, Path]:
    """``{name: folder}`` for finetune, prune layers, prune structured and distill outputs of every family (plus a
    Whisper window that is not whole seconds and a Whisper student that saves as a stock model)."""
    out: dict[str, Path] = {}
    for fam in families:
        clf = classifier(fam)
        out[f"{fam}-finetune"] = clf.save_pretrained(root / f"{fam}-finetune")
        out[f"{fam}-layers"] = clf.drop_layers([2]).save_pretrained(root / f"{fam}-layers")
        out[f"{fam}-structured"] = structured(clf).save_pretrained(root / f"{fam}-structured")
        torch.manual_seed(0)
        student = build_student(clf, student_config(clf, "mlp", 16, 1))
        save_student(student, root / f"{fam}-distill", feature_extractor=clf.feature_extractor)
        out[f"{fam}-distill"] = root / f"{fam}-distill"
    if "whisper" in families:
        clf = classifier("whisper", window=1.5)
        out["whisper-finetune-w1.5"] = clf.save_pretrained(root / "whisper-finetune-w1.5")
        clf = classifier("whisper")
        student = build_student(clf, student_config(clf, "transformer", 32, 1))
        save_student(student, root / "whisper-distill-stock", feature_extractor=clf.feature_extractor)
        out["whisper-distill-stock"] = root / "whisper-distill-stock"
    return out


def speechprune_logits(folder: Path, wave) -> torch.Tensor:
    """Logits of a saved folder as speechprune computes them (its own loaders, no custom code)."""
    from speechprune.compress.distill.export import CONFIG_FILE, load_student
    from speechprune.models.classifier import classifier_inputs

    if (folder / CONFIG_FILE).is_file():
        return load_student(folder).predict([wave])
    enc = load_encoder(folder)
    with torch.no_grad():
        return enc.model(**classifier_inputs(enc, [wave])).logits
