"""Two-stage distillation of a fine-tuned classifier into front end + mimicker + head (docs/methods.md §2c).

* **Stage 1** trains the mimicker alone with MSE to the teacher's last state (as its head sees it) and, for a
  2-block mimicker with ``intermediate=i``, the first block's output to the teacher's raw state i. Inputs and targets
  come from the cached teacher pass (:mod:`.targets`), so the teacher runs once; the front end is the teacher's,
  frozen. Model selection keeps the epoch with the lowest validation MSE.
* **Stage 2** puts the teacher's head (projector, mean pooling, classifier — copied, then trained) on the
  mimicker and trains with cross-entropy; the mimicker is frozen by default (``freeze_mimicker``), as in the
  reference. Model selection keeps the epoch with the best validation accuracy (ties: lower loss).

Both stages run on :class:`speechprune.train.loop.Trainer` (accelerate; resumable checkpoints after every epoch;
early stopping; progress bar). The run's checkpoints live in ``.<out>.training/`` beside the output, and
``resume=True`` continues an interrupted run at the stage and epoch it reached.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speechprune.compress.distill.export import save_student
from speechprune.compress.distill.student import (
    StudentClassifier,
    build_student,
    student_config,
    teacher_stack_params,
)
from speechprune.compress.distill.targets import FrameCollate, FrameDataset, teacher_targets
from speechprune.data.splits import SplitSpec, make_splits
from speechprune.data.types import AudioDataset
from speechprune.errors import DataError
from speechprune.models.adapter import SpeechEncoder
from speechprune.models.classifier import class_names
from speechprune.train.finetune import prepare_output
from speechprune.train.loop import LOGS_DIR, TrainConfig, Trainer, copy_logs
from speechprune.utils import distributed
from speechprune.utils.device import model_device, to_device
from speechprune.utils.io import write_json_atomic

STAGE1_DONE = "stage1.safetensors"


@dataclass
class DistillConfig:
    """What to distil into and how to train it. ``stage1``/``stage2`` are ordinary :class:`TrainConfig` objects
    (their freezing options are ignored: the front end is always frozen, the mimicker per ``freeze_mimicker``)."""

    mimicker: str = "mlp"
    hidden: int = 64
    blocks: int = 2
    nhead: int | None = None
    intermediate: int | None = None
    positions: bool = True
    freeze_mimicker: bool = True
    stage1: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=30, batch_size=32, lr=1e-3, schedule="constant", warmup_ratio=0.0, max_grad_norm=None, patience=5))
    stage2: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=20, batch_size=32, lr=1e-3, schedule="constant", warmup_ratio=0.0, max_grad_norm=None, patience=5))
    teacher_batch_size: int = 8
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stage1": self.stage1.to_dict(), "stage2": self.stage2.to_dict()}


# ---------------------------------------------------------------------------------------------------------------
# losses (signature of speechprune.train.loop.LossFn: (model, batch) -> (loss, logits))


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)[..., None]
    return (err * m).sum() / (m.sum() * err.shape[-1])


def stage1_loss(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE of the mimicker's output to the last-state target (+ first block to the intermediate target)."""
    mask = batch.get("frame_mask")
    out = model(front=batch["front"], frame_mask=mask)
    loss = _masked_mse(out.final, batch["target_last"], mask)
    if "target_intermediate" in batch:
        loss = loss + _masked_mse(out.block_outputs[0], batch["target_intermediate"], mask)
    # a constant one-column "logit" makes the trainer's accuracy constant, so it selects by validation loss
    return loss, torch.zeros(batch["front"].shape[0], 1, device=loss.device)


def stage2_loss(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(front=batch["front"], frame_mask=batch.get("frame_mask")).logits
    return nn.functional.cross_entropy(logits.float(), batch["labels"]), logits


# ---------------------------------------------------------------------------------------------------------------


def _set_trainable(student: StudentClassifier, stage: int, freeze_mimicker: bool) -> list[dict[str, Any]]:
    for p in student.parameters():
        p.requires_grad_(False)
    groups = []
    mim = list(student.mimicker.parameters())
    if stage == 1 or not freeze_mimicker:
        for p in mim:
            p.requires_grad_(True)
        if mim:
            groups.append({"params": mim, "name": "mimicker"})
    if stage == 2:
        head = student.head_parameters()
        for p in head:
            p.requires_grad_(True)
        groups.append({"params": head, "name": "head"})
    return groups


def _with_lr(groups: list[dict[str, Any]], cfg: TrainConfig) -> list[dict[str, Any]]:
    for g in groups:
        g["lr"] = cfg.head_lr or cfg.lr if g["name"] == "head" else cfg.lr
    return groups


def distill(
    teacher: SpeechEncoder,
    dataset: AudioDataset,
    label: str,
    out: str | Path,
    cfg: DistillConfig | None = None,
    split: SplitSpec | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    evaluate_test: bool = True,
    stop_after: tuple[int, int] | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Distil ``teacher`` (a fine-tuned classifier) for ``label`` into a student saved at ``out``.

    Returns a summary (splits, both stages' training records, test metrics, cost). ``stop_after=(stage, epochs)``
    simulates an interruption after that many epochs of that stage (checkpoints kept, nothing saved to ``out``).
    """
    cfg = cfg or DistillConfig()
    split = split or SplitSpec(seed=cfg.seed)
    config = student_config(teacher, cfg.mimicker, cfg.hidden, cfg.blocks, nhead=cfg.nhead, positions=cfg.positions,
                            intermediate=cfg.intermediate)
    cfg.stage1.validate()
    cfg.stage2.validate()
    out = Path(out)
    work = prepare_output(out, resume=resume, overwrite=overwrite)
    main = distributed.is_main_process()
    classes = class_names(teacher)
    parts = make_splits(dataset, label, split)
    values = dataset.labels(label)
    index = {c: k for k, c in enumerate(classes)}
    unknown = sorted({values[i] for p in parts.values() for i in p} - set(index))
    if unknown:
        raise DataError(f"{dataset.name}: label value(s) {unknown} of {label!r} are not classes of the teacher "
                        f"({', '.join(classes)})")
    t0 = time.perf_counter()
    with distributed.main_process_first():  # in a multi-process run the others then read the cache
        targets = teacher_targets(teacher, dataset, intermediate=cfg.intermediate, batch_size=cfg.teacher_batch_size,
                                  max_seconds=cfg.stage2.max_seconds, cache_dir=cache_dir,
                                  progress=progress and main)
    teacher_pass_s = time.perf_counter() - t0
    student = build_student(teacher, config, seed=cfg.seed)
    if main:
        work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(work / "student_config.json", config)

    def frames(key: str, with_labels: bool) -> FrameDataset:
        idx = parts[key]
        return FrameDataset(targets, idx, [index[values[i]] for i in idx] if with_labels else None)

    summary: dict[str, Any] = {
        "label": label, "classes": classes, "splits": {k: int(len(v)) for k, v in parts.items()},
        "split_spec": split.to_dict(), "distill_config": cfg.to_dict(), "student_config": config,
        "teacher_pass_seconds": teacher_pass_s, "teacher_targets": {
            "cache_key": targets.meta.get("key"), "computed_in_seconds": targets.meta.get("seconds"),
            "frames": targets.meta.get("frames"),
            "last_includes_final_norm": targets.meta.get("last_includes_final_norm")},
        **(metadata or {}),
    }

    def fit_stage(stage: int, model: StudentClassifier, description: str) -> tuple[StudentClassifier, Any, bool]:
        """Train stage 1 (regression to the teacher's states) or 2 (the head, on labels); returns the trained model,
        the fit result and whether ``stop_after`` interrupted it."""
        stage_cfg = cfg.stage1 if stage == 1 else cfg.stage2
        labelled = stage == 2
        groups = _with_lr(_set_trainable(model, stage, cfg.freeze_mimicker), stage_cfg)
        collate = FrameCollate(targets.pool_all_frames, regression=not labelled)
        stage_work = work / f"stage{stage}"
        trainer = Trainer(model, frames("train", labelled), frames("validation", labelled), collate, stage_cfg,
                          stage_work, loss_fn=stage2_loss if labelled else stage1_loss, param_groups=groups,
                          progress=progress, description=description, logs_dir=work / LOGS_DIR)
        stop = stop_after[1] if stop_after and stop_after[0] == stage else None
        res = trainer.fit(resume=resume and (stage_work / "checkpoint").exists(), stop_after_epochs=stop)
        interrupted = stop is not None and res.state.epoch < stage_cfg.epochs and not res.state.stopped_early
        return trainer.model, res, interrupted

    # --- stage 1 ---------------------------------------------------------------------------------------------
    done1 = work / STAGE1_DONE
    if cfg.mimicker != "none":
        if done1.exists():
            from safetensors.torch import load_model

            load_model(student, str(done1))
            import json

            summary["stage1"] = json.loads((work / "stage1.json").read_text())
        else:
            student, res, interrupted = fit_stage(
                1, student, f"stage 1: {cfg.mimicker} mimicker (h={cfg.hidden}, {cfg.blocks} blocks)")
            if interrupted:
                summary["finished"] = False
                return summary
            rec = res.to_dict()
            rec["best_validation_mse"] = res.state.best_loss
            summary["stage1"] = rec
            from safetensors.torch import save_model

            if main:
                write_json_atomic(work / "stage1.json", rec)
                save_model(student, str(done1))
                shutil.rmtree(work / "stage1", ignore_errors=True)
            distributed.barrier()
        summary["stage1"]["test_mse"] = _stage1_mse(student, frames("test", False), targets.pool_all_frames) \
            if len(parts["test"]) else None

    # --- stage 2 ---------------------------------------------------------------------------------------------
    before = {k: v.detach().clone() for k, v in student.mimicker.state_dict().items()}
    student, res, interrupted = fit_stage(
        2, student, f"stage 2: head on {cfg.mimicker} ({'frozen' if cfg.freeze_mimicker else 'trained'})")
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    summary["stage2"] = res.to_dict()
    summary["mimicker_unchanged_in_stage2"] = all(
        torch.equal(before[k], v) for k, v in student.mimicker.state_dict().items())
    if interrupted:
        summary["finished"] = False
        return summary
    summary["finished"] = True
    if not main:
        return summary  # in a multi-process run only the main process evaluates and writes the student
    if evaluate_test and len(parts["test"]):
        from speechprune.compress.distill.evaluate import evaluate_student

        summary["test"] = evaluate_student(student, teacher, dataset, label, parts["test"],
                                           batch_size=cfg.stage2.eval_batch_size or cfg.stage2.batch_size)
    summary["cost"] = student_cost(student, teacher)
    saved = save_student(student, out, feature_extractor=teacher.feature_extractor,
                         extra_json={"distill.json": summary, "metrics.json": summary.get("test", {})})
    copy_logs(work, out)  # --report-to curves of both stages outlive the work folder
    summary["model_dir"] = str(out)
    summary["saved_as"] = saved
    shutil.rmtree(work, ignore_errors=True)
    return summary


@torch.no_grad()
def _stage1_mse(student: StudentClassifier, ds: FrameDataset, pool_all: bool) -> float:
    collate = FrameCollate(pool_all, regression=True)
    student.eval()
    device = model_device(student)  # after training the student is wherever the trainer put it (e.g. CUDA)
    total, count = 0.0, 0
    for start in range(0, len(ds), 64):
        batch = to_device(collate([ds[k] for k in range(start, min(start + 64, len(ds)))]), device)
        loss, _ = stage1_loss(student, batch)
        n = batch["front"].shape[0]
        total += float(loss) * n
        count += n
    return total / max(count, 1)


def student_cost(student: StudentClassifier, teacher: SpeechEncoder | None = None, seconds: float = 1.0
                 ) -> dict[str, Any]:
    """Parameters (whole model and the stack the mimicker replaces) and analytic MACs of one clip, beside the
    teacher's when given. Latency is measured separately (:func:`.evaluate.compare_latency`)."""
    num_samples = round(seconds * 16_000)
    macs = student.mac_breakdown(num_samples)
    params = student.param_breakdown()
    res: dict[str, Any] = {
        "params_total": params["total"], "params_parts": params, "params_stack": params["mimicker"],
        "macs_per_clip": macs["total"], "macs_parts": macs["parts"], "frames": macs["frames"],
        "clip_seconds": seconds,
    }
    if teacher is not None:
        from speechprune.profile.macs import count_macs
        from speechprune.profile.params import count_params

        t_params = count_params(teacher.model)["total"]
        stack = teacher_stack_params(teacher)
        t_macs = count_macs(teacher.model, num_samples)
        res["teacher"] = {"params_total": t_params, "params_stack": stack["stack"], "params_layers": stack["layers"],
                          "macs_per_clip": t_macs}
        res["params_fraction"] = params["total"] / t_params
        res["stack_params_fraction"] = params["mimicker"] / stack["stack"]
        res["mac_gain"] = t_macs / macs["total"]
    return res


