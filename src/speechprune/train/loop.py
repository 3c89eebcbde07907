"""The one training loop every compression reuses (fine-tuning, distillation stage 2, structured pruning).

Built on ``accelerate``: the same code runs on one CPU, one GPU, or ``accelerate launch`` over several processes
(data-parallel; each process takes its share of every batch, metrics are gathered). What it adds to a plain loop:

* **resumable** — after every epoch the full state (model, optimiser, scheduler, RNG, history, best weights)
  is written to a checkpoint folder, atomically. ``resume=True`` continues from the last finished epoch, and a
  resumed run ends with the same numbers as an uninterrupted one: the data order depends only on seed and epoch
  (:class:`~speechprune.train.data.EpochShuffleSampler`) and the RNG states are restored;
* **model selection** on a validation split (accuracy, ties broken by loss) with early stopping (``patience``);
* a progress bar, and the wall time spent training, summed over resumes;
* **experiment tracking** (``report_to``: ``tensorboard``, ``wandb`` or ``none``) through accelerate's trackers,
  as HF Trainer users expect: ``train/loss`` every update, ``train/epoch_loss``, ``val/loss`` and
  ``val/accuracy`` every epoch, written under ``<work_dir>/logs/<run>``.

Callers customise the loss (``loss_fn``) and the optimiser's parameter groups (``param_groups``); whatever else
must be saved with the model (gates, Lagrange multipliers) should be a submodule of it.

Why one module of over 400 lines: it is one class, and its resumable state (checkpoint, RNG, history, best
weights, trackers) must be written and read back in one place to stay consistent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from speechprune.errors import SpeechpruneError
from speechprune.utils.precision import to_accelerate
from speechprune.train.data import EpochShuffleSampler, split_model_inputs
from speechprune.train.guards import DivergedError, check_loss, check_numbers, check_weights, discard_run
from speechprune.utils.io import recover_swap, replace_dir, write_json_atomic

SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
TRACKERS = ("none", "tensorboard", "wandb")
STATE_FILE = "trainer_state.json"
BEST_FILE = "best_model.safetensors"

LossFn = Callable[[nn.Module, dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainConfig:
    """Options of one training run (all have CLI flags of the same name)."""

    epochs: int = 5
    batch_size: int = 8
    eval_batch_size: int | None = None
    grad_accum: int = 1
    lr: float = 5e-5
    head_lr: float | None = None
    weight_decay: float = 0.0
    schedule: str = "linear"
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    freeze_front_end: bool = True
    freeze_encoder: bool = False
    patience: int | None = None
    seed: int = 0
    mixed_precision: str = "fp32"
    max_seconds: float | None = None
    preload: bool = True
    device: str = "auto"
    report_to: str = "none"

    def validate(self) -> "TrainConfig":
        from speechprune.utils.precision import normalize_precision

        self.mixed_precision = normalize_precision(self.mixed_precision, "mixed_precision")  # no/fp32, bf16, fp16
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.head_lr is None or self.head_lr > 0, f"head_lr must be > 0, got {self.head_lr}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.patience is None or self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (self.max_seconds is None or self.max_seconds > 0, f"max_seconds must be > 0, got {self.max_seconds}"),
            (self.report_to in TRACKERS, f"report_to must be one of {', '.join(TRACKERS)}, got {self.report_to!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise SpeechpruneError(msg)
        check_numbers(self)
        from speechprune.utils.device import check_device

        self.device = check_device(self.device)  # auto | cpu | cuda | cuda:N; CUDA without CUDA fails here
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainerState:
    """What survives between epochs (and interruptions)."""

    epoch: int = 0  # epochs finished
    global_step: int = 0
    best_epoch: int | None = None
    best_accuracy: float = -1.0
    best_loss: float = math.inf
    bad_epochs: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    state: TrainerState
    config: TrainConfig
    num_train: int
    num_validation: int
    num_processes: int
    trainable_params: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "epochs_run": self.state.epoch,
            "global_step": self.state.global_step,
            "best_epoch": self.state.best_epoch,
            "best_validation_accuracy": self.state.best_accuracy,
            "best_validation_loss": self.state.best_loss,
            "stopped_early": self.state.stopped_early,
            "train_seconds": self.state.train_seconds,
            "num_train": self.num_train,
            "num_validation": self.num_validation,
            "num_processes": self.num_processes,
            "trainable_params": self.trainable_params,
            "history": self.state.history,
        }


def cross_entropy_loss(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The default loss: cross-entropy of the model's logits against ``batch["labels"]``."""
    kwargs, labels = split_model_inputs(batch)
    logits = model(**kwargs).logits
    return nn.functional.cross_entropy(logits.float(), labels), logits


class Trainer:
    """Train ``model`` on ``train_set`` with validation on ``val_set``; checkpoints live in ``work_dir``."""

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset,
        collate: Callable[[list[Any]], dict[str, Any]],
        cfg: TrainConfig,
        work_dir: str | Path,
        *,
        loss_fn: LossFn = cross_entropy_loss,
        param_groups: list[dict[str, Any]] | None = None,
        progress: bool = True,
        description: str = "training",
        logs_dir: str | Path | None = None,
    ) -> None:
        self.model = model
        self.train_set = train_set
        self.val_set = val_set
        self.collate = collate
        self.cfg = cfg.validate()
        self.work_dir = Path(work_dir)
        self.loss_fn = loss_fn
        self.param_groups = param_groups
        self.progress = progress
        self.description = description
        self.logs_dir = Path(logs_dir) if logs_dir is not None else self.work_dir / LOGS_DIR
        if len(train_set) == 0:
            raise SpeechpruneError("the training split is empty")
        if len(val_set) == 0:
            raise SpeechpruneError("the validation split is empty: model selection and early stopping need one")
        from speechprune.utils.distributed import is_main_process

        if is_main_process():  # a crash between the two renames of the checkpoint swap: resume from either copy
            recover_swap(self.checkpoint_dir, self.checkpoint_dir.with_name("checkpoint.tmp"), STATE_FILE)

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoint"

    def fit(self, *, resume: bool = False, stop_after_epochs: int | None = None) -> TrainResult:
        """Train to the end (or to early stopping) and leave the best weights in ``self.model``.

        ``stop_after_epochs`` ends the call after that many epochs *of this call* with the checkpoint written,
        as an interruption would (used to test resuming).
        """
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.cfg
        if cfg.mixed_precision == "bf16" and not torch.cuda.is_available():
            from speechprune.utils.hardware import cpu_has_fast_bf16

            if not cpu_has_fast_bf16():
                warnings.warn("bf16 on a CPU without native bf16 is far slower than fp32", RuntimeWarning, stacklevel=2)
        from speechprune.utils.device import resolve_device

        dev = resolve_device(cfg.device)  # TF32 on CUDA
        cpu = dev.type == "cpu"
        if dev.type == "cuda" and dev.index is not None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            torch.cuda.set_device(dev)  # cuda:N in a single process (a launcher assigns one GPU per process)
        fresh_accelerator_state(to_accelerate(cfg.mixed_precision), cpu)
        tracking = cfg.report_to != "none"
        if tracking:
            _check_tracker(cfg.report_to)
        accel = Accelerator(mixed_precision=to_accelerate(cfg.mixed_precision), gradient_accumulation_steps=cfg.grad_accum, cpu=cpu,
                            log_with=cfg.report_to if tracking else None,
                            project_config=_project_config(self.work_dir, self.logs_dir) if tracking else None)
        if tracking:
            accel.init_trackers(_run_name(self.description), config=_tracker_config(cfg),
                                init_kwargs={"tensorboard": {}} if cfg.report_to == "tensorboard" else {})
        set_seed(cfg.seed)
        groups = self.param_groups if self.param_groups is not None else default_param_groups(self.model, cfg)
        trainable = sum(p.numel() for g in groups for p in g["params"])
        if trainable == 0:
            raise SpeechpruneError("nothing to train: every parameter is frozen")
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sampler = EpochShuffleSampler(len(self.train_set), cfg.seed)
        train_loader = DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=sampler, collate_fn=self.collate)
        val_loader = DataLoader(self.val_set, batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False,
                                collate_fn=self.collate)
        model, optimizer, train_loader, val_loader = accel.prepare(self.model, optimizer, train_loader, val_loader)
        updates_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)
        total = updates_per_epoch * cfg.epochs
        from transformers import get_scheduler

        scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total) *
                                  accel.num_processes, num_training_steps=total * accel.num_processes)
        scheduler = accel.prepare(scheduler)
        state = TrainerState()
        if resume:
            state = self._load(accel)
        elif self.checkpoint_dir.exists():
            raise SpeechpruneError(f"{self.checkpoint_dir} holds an interrupted run: resume it or start afresh")

        bar = _bar(self.progress and accel.is_main_process, total, state.global_step, self.description)
        epochs_this_call = 0
        try:
            while state.epoch < cfg.epochs and not state.stopped_early:
                t0 = time.perf_counter()
                train_loader.set_epoch(state.epoch)
                model.train()
                losses = []
                for batch in train_loader:
                    with accel.accumulate(model):
                        loss, _ = self.loss_fn(model, batch)
                        check_loss(loss, epoch=state.epoch + 1, step=state.global_step, lr=cfg.lr)
                        accel.backward(loss)
                        if accel.sync_gradients and cfg.max_grad_norm:
                            accel.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad()
                    losses.append(float(loss.detach()))
                    if accel.sync_gradients:
                        state.global_step += 1
                        bar.update(1)
                        bar.set_postfix(epoch=state.epoch + 1, loss=f"{np.mean(losses[-20:]):.3f}")
                        if tracking:
                            accel.log({"train/loss": losses[-1], "train/lr": scheduler.get_last_lr()[0]},
                                      step=state.global_step)
                train_time = time.perf_counter() - t0
                val = evaluate_loader(model, val_loader, accel, self.loss_fn)
                state.train_seconds += train_time
                self._record(state, float(np.mean(losses)), val, train_time)
                if tracking:
                    accel.log({"train/epoch_loss": float(np.mean(losses)), "val/loss": val["loss"],
                               "val/accuracy": val["accuracy"], "epoch": state.epoch + 1}, step=state.global_step)
                state.epoch += 1
                if state.best_epoch == state.epoch:
                    self._save_best(accel, model)
                self._save(accel, state)
                epochs_this_call += 1
                if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                    break
        except DivergedError:
            if accel.is_main_process:  # keep nothing of a diverged run: no checkpoint to resume into garbage
                discard_run(self.work_dir)
            raise
        finally:
            bar.close()
            if tracking:
                accel.end_training()
        accel.wait_for_everyone()
        if state.epoch >= cfg.epochs or state.stopped_early:
            self._load_best(accel, model)
            try:
                check_weights(accel.unwrap_model(model))
            except DivergedError:
                if accel.is_main_process:
                    discard_run(self.work_dir)
                raise
        self.model = accel.unwrap_model(model)
        # every process has read the best weights before any returns: the main process's caller removes the work
        # folder (checkpoint included) once it has written the model
        accel.wait_for_everyone()
        accel.free_memory()
        return TrainResult(state, cfg, len(self.train_set), len(self.val_set), accel.num_processes, trainable)

    # --- bookkeeping -----------------------------------------------------------------------------------------
    def _record(self, state: TrainerState, train_loss: float, val: dict[str, float], seconds: float) -> None:
        epoch = state.epoch + 1
        row = {"epoch": epoch, "step": state.global_step, "train_loss": train_loss,
               "val_loss": val["loss"], "val_accuracy": val["accuracy"], "seconds": seconds}
        state.history.append(row)
        self._update_best(state, epoch, val)

    def _update_best(self, state: TrainerState, epoch: int, val: dict[str, float]) -> None:
        """Best epoch = highest validation accuracy (ties: lower loss); count epochs without gain for patience."""
        better = val["accuracy"] > state.best_accuracy or (
            val["accuracy"] == state.best_accuracy and val["loss"] < state.best_loss)
        if better:
            state.best_epoch, state.best_accuracy, state.best_loss, state.bad_epochs = (
                epoch, val["accuracy"], val["loss"], 0)
        else:
            state.bad_epochs += 1
            if self.cfg.patience is not None and state.bad_epochs >= self.cfg.patience:
                state.stopped_early = True

    def _save(self, accel: Any, state: TrainerState) -> None:
        """Write the checkpoint into a fresh folder and swap it in, so a crash never leaves a half checkpoint."""
        ckpt = self.checkpoint_dir
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        if accel.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accel.wait_for_everyone()
        tmp.mkdir(parents=True, exist_ok=True)  # every process writes its own RNG state into it
        accel.save_state(str(tmp), safe_serialization=True)
        # accelerate's save_state ends without a barrier: the main process must not swap tmp away while another
        # process is still writing its random_states_<i>.pkl into it (a 2-process run failed with "Parent
        # directory …/checkpoint.tmp does not exist")
        accel.wait_for_everyone()
        if accel.is_main_process:
            best = ckpt / BEST_FILE
            if (self.work_dir / BEST_FILE).exists():
                shutil.move(str(self.work_dir / BEST_FILE), tmp / BEST_FILE)
            elif best.exists():
                shutil.copy2(best, tmp / BEST_FILE)
            write_json_atomic(tmp / STATE_FILE, {"state": asdict(state), "config": self.cfg.to_dict()})
            replace_dir(tmp, ckpt)
        accel.wait_for_everyone()

    def _load(self, accel: Any) -> TrainerState:
        ckpt = self.checkpoint_dir
        if not (ckpt / STATE_FILE).exists():
            raise SpeechpruneError(f"nothing to resume: no finished epoch in {ckpt}")
        saved = json.loads((ckpt / STATE_FILE).read_text())
        mismatched = {k: (v, saved["config"].get(k)) for k, v in self.cfg.to_dict().items()
                      if k not in ("device", "preload", "patience", "epochs", "report_to") and saved["config"].get(k) != v}
        if mismatched:
            raise SpeechpruneError(
                "cannot resume with different options: " + ", ".join(f"{k}={a!r} (checkpoint: {b!r})"
                                                                      for k, (a, b) in mismatched.items()))
        accel.load_state(str(ckpt))
        return TrainerState(**saved["state"])

    def _save_best(self, accel: Any, model: nn.Module) -> None:
        if accel.is_main_process:
            from safetensors.torch import save_model

            self.work_dir.mkdir(parents=True, exist_ok=True)
            save_model(accel.unwrap_model(model), str(self.work_dir / BEST_FILE))

    def _load_best(self, accel: Any, model: nn.Module) -> None:
        from safetensors.torch import load_model

        path = self.checkpoint_dir / BEST_FILE
        if path.exists():
            load_model(accel.unwrap_model(model), str(path))


def fresh_accelerator_state(mixed_precision: str, cpu: bool) -> None:
    """Let one process train several times with different precisions or devices (a ``run`` stage after another, a
    Python session, tests): accelerate keeps one global state and refuses an ``Accelerator`` whose
    ``mixed_precision`` or ``cpu`` differs from the first one. In a single process the stale state is dropped; a
    multi-process launch keeps it (every process there trains with the same options)."""
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if not state or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    device = state.get("device") or PartialState._shared_state.get("device")
    device_changed = device is not None and (device.type == "cpu") != cpu
    if state.get("_mixed_precision") != mixed_precision or device_changed:
        AcceleratorState._reset_state(reset_partial_state=device_changed)


def default_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Apply the freezing options and return the optimiser groups: the body at ``lr``, the head (``projector``,
    ``classifier``) at ``head_lr`` (default: ``lr``)."""
    from speechprune.models.loading import wrap_model

    enc = wrap_model(model)
    if cfg.freeze_front_end or cfg.freeze_encoder:
        for p in enc.front_end.parameters():
            p.requires_grad_(False)
    if cfg.freeze_encoder:
        for p in enc.encoder_module.parameters():
            p.requires_grad_(False)
    head_names = ("projector.", "classifier.")
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(head_names)]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(head_names)]
    groups = []
    if body:
        groups.append({"params": body, "lr": cfg.lr, "name": "body"})
    if head:
        groups.append({"params": head, "lr": cfg.head_lr or cfg.lr, "name": "head"})
    return groups


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: DataLoader, accel: Any, loss_fn: LossFn) -> dict[str, float]:
    """Mean loss and accuracy over a (possibly sharded) loader, gathered across processes."""
    model.eval()
    losses, correct, count = [], 0, 0
    for batch in loader:
        loss, logits = loss_fn(model, batch)
        preds, labels = accel.gather_for_metrics((logits.argmax(-1), batch["labels"]))
        n = int(labels.numel())
        losses.append(float(accel.gather_for_metrics(loss.detach().reshape(1)).mean()) * n)
        correct += int((preds == labels).sum())
        count += n
    return {"loss": sum(losses) / max(count, 1), "accuracy": correct / max(count, 1)}


def _check_tracker(name: str) -> None:
    """Fail before training, with the install command, when the tracker's package is missing."""
    import importlib.util

    package = {"tensorboard": "tensorboard", "wandb": "wandb"}[name]
    if name == "tensorboard" and importlib.util.find_spec("tensorboardX"):
        return
    if importlib.util.find_spec(package) is None:
        raise SpeechpruneError(f"--report-to {name} needs the '{package}' package: pip install {package}")


LOGS_DIR = "logs"


def _project_config(work_dir: Path, logs_dir: Path) -> Any:
    from accelerate.utils import ProjectConfiguration

    return ProjectConfiguration(project_dir=str(work_dir), logging_dir=str(logs_dir))


def copy_logs(work_dir: str | Path, out: str | Path) -> Path | None:
    """Copy a finished run's tracker logs (``<work_dir>/logs``) into the output folder ``out/logs``, so they
    outlive the checkpoint folder that is removed at the end; returns the copy, or None when nothing was logged."""
    src = Path(work_dir) / LOGS_DIR
    if not src.is_dir():
        return None
    dest = Path(out) / LOGS_DIR
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return dest


def _run_name(description: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", description).strip("-") or "training"


def _tracker_config(cfg: TrainConfig) -> dict[str, Any]:
    """Hyper-parameters as trackers accept them (TensorBoard's hparams take only scalars and strings)."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.to_dict().items()}


class _NullBar:
    def update(self, *_: Any) -> None: ...
    def set_postfix(self, **_: Any) -> None: ...
    def close(self) -> None: ...


def _bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
