"""Fine-tune a speech encoder with the standard classification head, and save it as a plain transformers folder.

The output folder ``out`` is written only when training has finished (atomically, like every model speechprune
saves); while training, checkpoints live in a hidden sibling ``.<out>.training/`` that ``resume=True`` continues
from. Besides the model files the folder holds ``training.json`` (options, splits, history, training time) and
``metrics.json`` (the test split's metrics).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from speechprune.data.cliplen import check_max_length, check_min_length
from speechprune.data.splits import SplitSpec, _natural, make_splits
from speechprune.data.types import AudioDataset
from speechprune.errors import SpeechpruneError
from speechprune.models.adapter import SpeechEncoder
from speechprune.models.classifier import add_classification_head, class_names, is_classifier
from speechprune.train.data import ClassifierCollate, ClipDataset
from speechprune.train.evaluate import evaluate_classifier
from speechprune.train.loop import TrainConfig, Trainer, copy_logs
from speechprune.utils.distributed import is_main_process
from speechprune.utils.outputs import claim_output


def work_dir_for(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.training"


def prepare_output(out: Path, *, resume: bool, overwrite: bool) -> Path:
    """Check the output and checkpoint folders before any work, and return the checkpoint folder."""
    work = work_dir_for(out)
    claim_output(out, overwrite=True, command="finetune")  # usable path + lock; non-empty is checked below
    if overwrite:
        shutil.rmtree(work, ignore_errors=True)
    elif out.exists() and any(out.iterdir()):
        raise SpeechpruneError(f"{out} already exists; choose another --out or pass --overwrite")
    elif work.exists() and not resume:
        raise SpeechpruneError(
            f"an interrupted run for {out} exists in {work}: pass --resume to continue it or --overwrite to restart"
        )
    elif resume and not work.exists():
        raise SpeechpruneError(f"nothing to resume for {out}: no checkpoint folder {work}")
    return work


def classes_for(dataset: AudioDataset, label: str, train_indices: np.ndarray) -> list[str]:
    values = dataset.labels(label)
    return sorted({values[i] for i in train_indices}, key=_natural)


def finetune(
    encoder: SpeechEncoder,
    dataset: AudioDataset,
    label: str,
    out: str | Path,
    cfg: TrainConfig | None = None,
    split: SplitSpec | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    evaluate_test: bool = True,
    latency_repeats: int = 10,
    stop_after_epochs: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``encoder`` for ``label`` and save it to ``out``; returns the training and test summary.

    A model that already has a head for exactly these classes keeps it; otherwise a fresh head is added.
    ``stop_after_epochs`` simulates an interruption (the checkpoint is kept and nothing is saved to ``out``).
    """
    from speechprune.models.io import save_encoder

    cfg = (cfg or TrainConfig()).validate()
    split = split or SplitSpec(seed=cfg.seed)
    if split.group_column is None:
        split.group_column = dataset.group_column
    out = Path(out)
    work = prepare_output(out, resume=resume, overwrite=overwrite)
    parts = make_splits(dataset, label, split)
    check_min_length(dataset, encoder)  # a too-short or too-long clip is named before training starts
    check_max_length(dataset, encoder, max_seconds=cfg.max_seconds)
    classes = classes_for(dataset, label, parts["train"])
    if is_classifier(encoder) and class_names(encoder) == classes:
        model_enc = encoder
    else:
        model_enc = add_classification_head(encoder, classes, seed=cfg.seed)
    make = lambda key: ClipDataset(dataset, parts[key], label, classes, max_seconds=cfg.max_seconds,  # noqa: E731
                                   preload=cfg.preload)
    trainer = Trainer(model_enc.model, make("train"), make("validation"), ClassifierCollate(model_enc), cfg, work,
                      progress=progress, description=f"fine-tuning {model_enc.family} ({model_enc.num_layers} layers)")
    result = trainer.fit(resume=resume, stop_after_epochs=stop_after_epochs)
    model_enc.model = trainer.model.eval()
    summary: dict[str, Any] = {
        "label": label,
        "classes": classes,
        "splits": {k: int(len(v)) for k, v in parts.items()},
        "split_spec": split.to_dict(),
        "training": result.to_dict(),
        "finished": result.state.epoch >= cfg.epochs or result.state.stopped_early,
        "num_layers": model_enc.num_layers,
        "kept_layers_of_source": model_enc.kept_layers,
        **(metadata or {}),
    }
    if not summary["finished"] or not is_main_process():
        return summary  # in a multi-process run only the main process evaluates and writes the model
    if evaluate_test and len(parts["test"]):
        summary["test"] = evaluate_classifier(model_enc, dataset, label, parts["test"], batch_size=cfg.batch_size,
                                              max_seconds=cfg.max_seconds, latency_repeats=latency_repeats)
    save_encoder(model_enc, out, metadata={"finetune": {"label": label, "classes": classes}},
                 extra_json={"training.json": summary, "metrics.json": summary.get("test", {})})
    copy_logs(work, out)  # TensorBoard / W&B logs of --report-to outlive the checkpoint folder
    shutil.rmtree(work, ignore_errors=True)
    summary["model_dir"] = str(out)
    return summary
