"""Structured pruning of a fine-tuned classifier to a budget (HJ-Pruning, docs/methods.md §3), end to end.

:func:`prune_structured` takes a fine-tuned stock classifier (``*ForSequenceClassification`` or
``WhisperForAudioClassification``), puts HardConcrete gates on it (:func:`~.gated.attach_gates`) and trains

    L = L_task (+ distill_weight · L_distill) + Σ_budgets λ1(ŝ − t) + λ2(ŝ − t)²

with the shared :class:`~speechprune.train.loop.Trainer` (accelerate, atomic per-epoch checkpoints, resume,
progress bar). Three optimiser groups: the model's weights at ``lr`` (head at ``head_lr``), the gates' ``log α``
at ``gate_lr``, the multipliers λ at ``-reg_lr`` (gradient *ascent*; AdamW accepts a negative group learning
rate). The target sparsity ``t`` ramps linearly from 0 over the first ``target_warmup`` share of the updates and
stays at the budget afterwards. Gates, λ and the update counter are submodules/buffers of the trained module, so
checkpoints and ``resume`` include them. The distillation teacher (a frozen copy of the unpruned model, only
built when ``distill_weight > 0``) is deliberately *not* a submodule: it never changes and would double every
checkpoint.

**Model selection.** The budget is reached only at the end of the target warm-up, so an early epoch (less
pruned, usually more accurate) must never be chosen. An epoch is *eligible* when the target warm-up is over (and,
with ``calibrate=False``, the eval-mask cost of every budget is at most ``keep + tolerance``); among eligible
epochs the best validation accuracy wins (ties: lower loss). If no epoch is eligible, the last epoch is kept.
``patience`` counts eligible epochs only.

**Calibration** (``calibrate=True``, default; not part of HJ-Pruning). Runs here are ~10² updates, not DPHuBERT's
5·10⁴, and the Lagrangian (gates starting saturated at log α ≈ 4.6, multipliers winding up while nothing moves)
does not settle exactly in that time. After selection, one common offset per budget is added to the log α of the
gates that set its cost, by bisection, so that the final cost is the largest one not above the budget
(:func:`calibrate_gates`). ``training.json`` records the offset and the uncalibrated cost
(``budgets_before_calibration``), so the Lagrangian's own error stays visible.

After training: eval masks → :meth:`~.gated.GatedModel.prune` (physical removal, soft mask values folded in) →
optionally ``finetune_epochs`` more epochs of plain fine-tuning without gates → test-split evaluation → the
folder ``out`` (written atomically at the very end): model (a stock transformers folder when the stock config
describes the result, else a ``speechprune_structure`` folder that :func:`~.export.load_pruned` and
:func:`speechprune.models.load_encoder` read), ``training.json`` (options, history with expected/final cost per
epoch, budgets with expected vs final cost and budget error) and ``metrics.json`` (test metrics and cost).

Why one module of about 500 lines: the training module, its trainer, model selection and calibration share
the gates' and multipliers' state and the checkpoint format, and change together.
"""

from __future__ import annotations

import copy
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speechprune.compress.structured.budget import BudgetError, BudgetLagrangian, check_reachable, parse_budget
from speechprune.compress.structured.gated import GatedModel, attach_gates
from speechprune.compress.structured.sites import DEFAULT_STRUCTURES, check_structures
from speechprune.errors import SpeechpruneError

TOLERANCE = 0.02


@dataclass
class PruneOptions:
    """Pruning-specific options (the usual training options are a :class:`~speechprune.train.loop.TrainConfig`)."""

    budgets: str = "macs=0.5"
    structures: tuple[str, ...] = DEFAULT_STRUCTURES
    #: Share of all updates over which the target sparsity ramps from 0 to the budget.
    target_warmup: float = 0.5
    #: Initial keep probability is 1 − p0: HardConcrete init ``log α = log((1 − p0)/p0)`` for conv channels/heads/
    #: layer gates (``p0_keep``) and FFN units (``p0_ffn``). DPHuBERT: 0.01 and 0.5.
    p0_keep: float = 0.01
    p0_ffn: float = 0.5
    #: Learning rate of the gates' log α. Much higher than DPHuBERT's 0.02 because runs here are ~10² updates,
    #: not 5·10⁴: log α starts at +4.6 and must travel to < 0 for a unit to go.
    gate_lr: float = 0.2
    #: Learning rate of the Lagrange multipliers (ascent).
    reg_lr: float = 0.2
    #: How λ ascends: ``"adamw"`` (an AdamW group with ``lr = -reg_lr``, as DPHuBERT) or ``"sgd"`` (plain
    #: gradient ascent ``λ += reg_lr · ∂L/∂λ`` after every update, so λ moves in proportion to the violation).
    reg_update: str = "adamw"
    distill_weight: float = 0.0
    #: Encoder states (1..L) matched to the teacher's with L1 + (1 − cosine); ``None``: every layer.
    distill_layers: tuple[int, ...] | None = None
    #: Epochs of plain fine-tuning of the pruned model (no gates) after pruning; 0 = pure HJ-Pruning. 2 helped in
    #: every benchmark run (Whisper base, EmoDB, 50 % MACs: 95 % -> 99.4 % of the unpruned accuracy); the CLI and
    #: ``compress.structured`` take this default.
    finetune_epochs: int = 2
    #: After training, shift the gates' log α by one common offset per budget (bisection) so that the final
    #: eval-mask cost is the largest not above the budget — see :func:`calibrate_gates`. Not part of HJ-Pruning:
    #: it absorbs what the Lagrangian has not settled in a short run; the offset and the uncalibrated cost are
    #: recorded.
    calibrate: bool = True
    #: Allowed excess of the final kept fraction over each budget (model selection, ``budget_met``).
    tolerance: float = TOLERANCE
    #: Reference clip length for the cost of wav2vec2-family models (Whisper: always one window).
    num_samples: int = 16_000

    def validate(self) -> "PruneOptions":
        self.structures = check_structures(tuple(self.structures))
        parse_budget(self.budgets)
        checks = [
            (0.0 <= self.target_warmup < 1.0, f"target_warmup must be in [0, 1), got {self.target_warmup}"),
            (0 < self.p0_keep < 1 and 0 < self.p0_ffn < 1, "p0_keep and p0_ffn must be in (0, 1)"),
            (self.gate_lr > 0, f"gate_lr must be > 0, got {self.gate_lr}"),
            (self.reg_lr > 0, f"reg_lr must be > 0, got {self.reg_lr}"),
            (self.reg_update in ("adamw", "sgd"), f"reg_update must be adamw or sgd, got {self.reg_update!r}"),
            (self.distill_weight >= 0, f"distill_weight must be >= 0, got {self.distill_weight}"),
            (self.finetune_epochs >= 0, f"finetune_epochs must be >= 0, got {self.finetune_epochs}"),
            (0.0 <= self.tolerance < 1.0, f"tolerance must be in [0, 1), got {self.tolerance}"),
            (self.num_samples > 0, f"num_samples must be > 0, got {self.num_samples}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise SpeechpruneError(msg)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["structures"] = list(self.structures)
        d["distill_layers"] = None if self.distill_layers is None else list(self.distill_layers)
        return d


class PruningModule(nn.Module):
    """What the trainer trains: the gated model, the Lagrangian (λ) and the update counter (a buffer, so that the
    target schedule continues exactly after a resume)."""

    def __init__(self, gated: GatedModel, reg: BudgetLagrangian, grad_accum: int = 1,
                 teacher: nn.Module | None = None, distill_weight: float = 0.0,
                 distill_layers: tuple[int, ...] | None = None, sgd_reg_lr: float | None = None) -> None:
        super().__init__()
        self.sgd_reg_lr = sgd_reg_lr
        self.gated = gated
        self.reg = reg
        self.grad_accum = int(grad_accum)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.register_buffer("pending", torch.zeros(2, len(reg.budgets), dtype=torch.float64))
        self._teacher = [teacher] if teacher is not None else []  # a list: not a submodule, not checkpointed
        self.distill_weight = float(distill_weight)
        self.distill_layers = distill_layers

    @property
    def step(self) -> int:
        """Optimiser updates done so far (the target schedule's clock)."""
        return int(self.calls) // self.grad_accum

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.gated(*args, **kwargs)

    def budget_report(self) -> dict[str, dict[str, float]]:
        """Per budget: target, expected and final (eval-mask) kept fraction, and λ1, λ2."""
        out = {}
        with torch.no_grad():
            for i, (b, sched) in enumerate(zip(self.reg.budgets, self.reg.schedules)):
                full = float(self.gated.full_cost(b.kind, b.part, self.reg.num_samples))
                exp = float(self.gated.expected_cost(b.kind, b.part, self.reg.num_samples)) / full
                fin = self.gated.final_cost(b.kind, b.part, self.reg.num_samples) / full
                out[b.name] = {"budget_keep": b.keep, "target_keep": 1.0 - sched(self.step), "expected_keep": exp,
                               "final_keep": fin, "budget_error": fin - b.keep,
                               "lambda1": float(self.reg.lambda1[i]), "lambda2": float(self.reg.lambda2[i])}
        return out

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        from speechprune.train.data import split_model_inputs

        kwargs, labels = split_model_inputs(batch)
        if self.training and self.sgd_reg_lr is not None:
            with torch.no_grad():  # the previous call's ascent step (not in place while its graph was alive)
                self.reg.lambda1 += self.pending[0]
                self.reg.lambda2 += self.pending[1]
                self.pending.zero_()
        distill = self.training and self.distill_weight > 0 and bool(self._teacher)
        out = self.gated(**kwargs, output_hidden_states=True) if distill else self.gated(**kwargs)
        logits = out.logits
        loss = nn.functional.cross_entropy(logits.float(), labels)
        if not self.training:
            return loss, logits  # validation: the task loss of the eval-mask model
        if distill:
            loss = loss + self.distill_weight * self._distill_loss(out.hidden_states, kwargs)
        total = loss + self.reg(self.gated, self.step)
        if self.sgd_reg_lr is not None:  # plain ascent: ∂L/∂λ1 = ŝ − t, ∂L/∂λ2 = (ŝ − t)²; applied next call
            d = torch.tensor([self.reg.last[b.name]["target_keep"] - self.reg.last[b.name]["expected_keep"]
                              for b in self.reg.budgets], dtype=torch.float64, device=self.pending.device)
            self.pending.copy_(torch.stack([d, d * d]) * (self.sgd_reg_lr / self.grad_accum))
        self.calls += 1
        return total, logits

    def _distill_loss(self, student_states: tuple[torch.Tensor, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        teacher = self._teacher[0]
        ref = student_states[-1]
        teacher.to(ref.device)
        with torch.no_grad():
            t_states = teacher(**kwargs, output_hidden_states=True).hidden_states
        layers = self.distill_layers or tuple(range(1, len(student_states)))
        terms = []
        for k in layers:
            s, t = student_states[k].float(), t_states[k].float()
            cos = nn.functional.cosine_similarity(s, t, dim=-1).mean()
            terms.append(nn.functional.l1_loss(s, t) + (1.0 - cos))
        return torch.stack(terms).mean()


def pruning_loss(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The trainer's ``loss_fn``: task (+ distillation) + Lagrangian in training, task loss in validation."""
    module = model.module if hasattr(model, "module") and not isinstance(model, PruningModule) else model
    return module.loss(batch)


def _trainer_class() -> type:
    from speechprune.train.loop import Trainer, TrainerState

    class PruningTrainer(Trainer):
        """The shared trainer with post-warm-up, within-budget model selection (see the module docstring)."""

        def __init__(self, *args: Any, module: PruningModule, warmup_steps: int, tolerance: float | None,
                     **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.module = module
            self.warmup_steps = int(warmup_steps)
            self.tolerance = tolerance

        def _record(self, state: TrainerState, train_loss: float, val: dict[str, float], seconds: float) -> None:
            epoch = state.epoch + 1
            report = self.module.budget_report()
            within = self.tolerance is None or all(r["final_keep"] <= r["budget_keep"] + self.tolerance
                                                   for r in report.values())
            eligible = state.global_step >= self.warmup_steps and within
            state.history.append({
                "epoch": epoch, "step": state.global_step, "train_loss": train_loss, "val_loss": val["loss"],
                "val_accuracy": val["accuracy"], "seconds": seconds, "eligible": eligible, "budgets": report})
            last = epoch >= self.cfg.epochs
            if not eligible:
                if last and state.best_epoch is None:  # nothing met the budget: keep the last epoch
                    state.best_epoch, state.best_accuracy, state.best_loss = epoch, val["accuracy"], val["loss"]
                return
            self._update_best(state, epoch, val)

    return PruningTrainer


@dataclass
class _Prepared:
    """Everything checked and built before anything is written."""

    budgets: list[Any]
    gated: GatedModel
    classes: list[str]
    parts: dict[str, Any] = field(default_factory=dict)


def _prepare(encoder: Any, dataset: Any, label: str, opts: PruneOptions, split: Any, seed: int) -> _Prepared:
    from speechprune.data.splits import make_splits
    from speechprune.models.classifier import class_names, is_classifier

    budgets = parse_budget(opts.budgets)
    if not is_classifier(encoder):
        raise SpeechpruneError(
            f"this {encoder.family} model has no classification head: structured pruning needs a fine-tuned "
            "classifier (run `speechprune finetune` first)")
    classes = class_names(encoder)
    gated = attach_gates(copy.deepcopy(encoder.model), opts.structures, p0_keep=opts.p0_keep, p0_ffn=opts.p0_ffn,
                         seed=seed)  # the initial gates from the run's seed, not from the global RNG's state
    try:
        check_reachable(budgets, gated, opts.num_samples)
    except BudgetError:
        gated.detach()
        raise
    parts = make_splits(dataset, label, split)
    values = dataset.labels(label)
    unknown = sorted({values[i] for k in parts for i in parts[k]} - set(classes))
    if unknown:
        gated.detach()
        raise SpeechpruneError(f"{dataset.name}: label value(s) {unknown} of {label!r} are not classes of this "
                               f"model ({', '.join(classes)})")
    return _Prepared(budgets, gated, classes, parts)


def prune_structured(
    encoder: Any,
    dataset: Any,
    label: str,
    out: str | Path,
    budgets: str | None = None,
    cfg: Any = None,
    split: Any = None,
    *,
    options: PruneOptions | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    evaluate_test: bool = True,
    latency_repeats: int = 10,
    stop_after_epochs: int | None = None,
    metadata: dict[str, Any] | None = None,
    **option_overrides: Any,
) -> dict[str, Any]:
    """Prune the fine-tuned classifier ``encoder`` (a :class:`~speechprune.models.adapter.SpeechEncoder`) to
    ``budgets`` (e.g. ``"macs=0.5"``: keep half the MACs) while training on ``label``, and save it to ``out``.

    ``cfg`` is a :class:`~speechprune.train.loop.TrainConfig` (epochs, lr, head_lr, batch size, seed, …),
    ``split`` a :class:`~speechprune.data.splits.SplitSpec`; pruning options come from ``options`` and/or
    keyword overrides (``target_warmup``, ``gate_lr``, ``reg_lr``, ``distill_weight``, ``distill_layers``,
    ``finetune_epochs``, ``structures``, ``tolerance``). Returns the summary that is also written to
    ``training.json``. Bad input (budget outside (0, 1), unreachable budget, unsupported family, a model without
    a head) raises before anything is written. ``stop_after_epochs`` simulates an interruption.
    """
    from speechprune.models.loading import wrap_model
    from speechprune.models.io import save_encoder
    from speechprune.train.data import ClassifierCollate, ClipDataset
    from speechprune.train.evaluate import evaluate_classifier
    from speechprune.train.finetune import prepare_output, work_dir_for
    from speechprune.train.loop import LOGS_DIR, TrainConfig, Trainer, copy_logs
    from speechprune.data.splits import SplitSpec
    from speechprune.utils.distributed import is_main_process

    opts = copy.deepcopy(options) if options is not None else PruneOptions()
    if budgets is not None:
        opts.budgets = budgets
    for k, v in option_overrides.items():
        if not hasattr(opts, k):
            raise TypeError(f"prune_structured() got an unexpected option {k!r}")
        setattr(opts, k, v)
    opts.validate()
    cfg = (cfg or TrainConfig()).validate()
    split = copy.deepcopy(split) if split is not None else SplitSpec(seed=cfg.seed)
    if split.group_column is None:
        split.group_column = dataset.group_column
    out = Path(out)
    prepare_output(out, resume=resume, overwrite=overwrite)  # before any heavy work
    prep = _prepare(encoder, dataset, label, opts, split, cfg.seed)
    work = work_dir_for(out)
    gated, parts, classes = prep.gated, prep.parts, prep.classes

    make = lambda key: ClipDataset(dataset, parts[key], label, classes, max_seconds=cfg.max_seconds,  # noqa: E731
                                   preload=cfg.preload)
    train_set, val_set = make("train"), make("validation")
    updates_per_epoch = math.ceil(math.ceil(len(train_set) / cfg.batch_size) / cfg.grad_accum)
    warmup_steps = round(opts.target_warmup * updates_per_epoch * cfg.epochs)
    reg = BudgetLagrangian(prep.budgets, warmup_steps, opts.num_samples)
    teacher = None
    if opts.distill_weight > 0:
        teacher = copy.deepcopy(encoder.model).eval().requires_grad_(False)
    if opts.reg_update == "sgd":
        reg.requires_grad_(False)
    module = PruningModule(gated, reg, cfg.grad_accum, teacher, opts.distill_weight, opts.distill_layers,
                           opts.reg_lr if opts.reg_update == "sgd" else None)
    groups = _param_groups(gated, reg, cfg, opts)
    collate = ClassifierCollate(encoder)
    trainer = _trainer_class()(
        module, train_set, val_set, collate, cfg, work / "prune", loss_fn=pruning_loss, param_groups=groups,
        progress=progress, description=f"pruning {encoder.family} to {opts.budgets}", module=module,
        warmup_steps=warmup_steps, tolerance=None if opts.calibrate else opts.tolerance)
    result = trainer.fit(resume=resume and (work / "prune" / "checkpoint").exists(),
                         stop_after_epochs=stop_after_epochs)
    module = trainer.model
    finished = result.state.epoch >= cfg.epochs or result.state.stopped_early
    summary: dict[str, Any] = {
        "label": label, "classes": classes, "splits": {k: int(len(v)) for k, v in parts.items()},
        "split_spec": split.to_dict(), "options": opts.to_dict(), "target_warmup_steps": warmup_steps,
        "training": result.to_dict(), "finished": finished, **(metadata or {}),
    }
    if not finished:
        return summary
    module.eval()
    full = {b.name: gated.full_cost(b.kind, b.part, opts.num_samples) for b in prep.budgets}

    def final_masks_summary() -> dict[str, Any]:
        """Budgets, costs and kept counts of the current eval masks (recorded before and after calibration)."""
        report = module.budget_report()
        return {
            "budgets": {name: {**r, "full_cost": full[name], "final_cost": round(r["final_keep"] * full[name]),
                               "expected_cost": r["expected_keep"] * full[name]} for name, r in report.items()},
            "budget_met": all(r["final_keep"] <= r["budget_keep"] + opts.tolerance for r in report.values()),
            "max_abs_budget_error": max(abs(r["budget_error"]) for r in report.values()),
            "kept_counts": gated.final_counts(),
            "costs": {f"{p}-{k}": {"full": gated.full_cost(k, p, opts.num_samples),
                                   "final": gated.final_cost(k, p, opts.num_samples)}
                      for k in ("macs", "params") for p in ("total", "frontend", "transformer")},
        }

    selected = next((h for h in result.state.history if h["epoch"] == result.state.best_epoch), {})
    summary["selected_epoch"] = result.state.best_epoch
    summary["selected_epoch_eligible"] = bool(selected.get("eligible", False))
    summary.update(final_masks_summary())
    if opts.calibrate:
        summary["calibration"] = calibrate_gates(gated, prep.budgets, opts.num_samples)
        summary["budgets_before_calibration"] = summary["budgets"]
        summary.update(final_masks_summary())
    counts = summary["kept_counts"]
    pruned = gated.prune()
    gated.detach()
    pruned_enc = wrap_model(pruned, copy.deepcopy(encoder.feature_extractor), source=encoder.source)
    pruned_enc.kept_layers = getattr(encoder, "kept_layers", None)
    if opts.finetune_epochs > 0:
        ft_cfg = TrainConfig(**{**cfg.to_dict(), "epochs": opts.finetune_epochs})
        ft_work = work / "finetune"
        ft = Trainer(pruned_enc.model, train_set, val_set, ClassifierCollate(pruned_enc), ft_cfg, ft_work,
                     progress=progress, description="fine-tuning the pruned model", logs_dir=work / LOGS_DIR)
        ft_res = ft.fit(resume=resume and (ft_work / "checkpoint").exists(), stop_after_epochs=None)
        pruned_enc.model = ft.model.eval()
        summary["finetune_after_pruning"] = ft_res.to_dict()
    if not is_main_process():
        return summary
    from speechprune.compress.structured.prune import STRUCTURE_KEY

    summary["stock_folder"] = not bool(getattr(pruned_enc.model.config, STRUCTURE_KEY, None))
    if evaluate_test and len(parts["test"]):
        test = evaluate_classifier(pruned_enc, dataset, label, parts["test"], batch_size=cfg.batch_size,
                                   max_seconds=cfg.max_seconds, latency_repeats=latency_repeats,
                                   profile_seconds=opts.num_samples / 16_000)
        summary["test"] = test
        # the analytic cost must be the profiler's count of the pruned model
        summary["profiler_macs"] = test["cost"]["macs_per_clip"]
        summary["profiler_params"] = test["cost"]["params_total"]
    save_encoder(pruned_enc, out, metadata={"structured_pruning": {
        "budgets": opts.budgets, "structures": list(opts.structures), "kept_counts": counts,
        "stock_folder": summary["stock_folder"]}},
        extra_json={"training.json": summary, "metrics.json": {**summary.get("test", {}),
                                                               "budgets": summary["budgets"],
                                                               "budget_met": summary["budget_met"]}})
    copy_logs(work, out)  # --report-to curves of the gated training and the fine-tuning outlive the work folder
    shutil.rmtree(work, ignore_errors=True)
    summary["model_dir"] = str(out)
    return summary


def calibrate_gates(gated: GatedModel, budgets: list[Any], num_samples: int = 16_000,
                    iterations: int = 40) -> dict[str, Any]:
    """Per budget, add one common offset δ to the ``log α`` of the gates that set its cost (front end: conv gates;
    transformer: head/FFN/layer gates; total: all gates not already set by a part budget) — the largest δ whose
    final (eval-mask) cost is at most the budget, found by bisection (the final cost only grows with δ). Part
    budgets go first. The offsets only choose the kept units: ``log α`` is restored afterwards and the eval masks
    are pinned (:func:`pin_eval_masks`) to the calibrated kept sets with the *trained* soft values.
    Returns ``{budget: {"offset", "fine_offset", "final_keep_before", "final_keep_after"}}``."""
    order = sorted(budgets, key=lambda b: b.part == "total")
    original = {n: g.log_alpha.detach().clone() for n, g in gated.gates.items()}
    done: set[str] = set()
    info: dict[str, Any] = {}
    for b in order:
        names = [n for n in gated.gates if (b.part == "total" or (n.startswith("conv_") == (b.part == "frontend")))
                 and n not in done]
        full = float(gated.full_cost(b.kind, b.part, num_samples))
        keep = lambda: gated.final_cost(b.kind, b.part, num_samples) / full  # noqa: E731
        before = keep()
        if not names:
            info[b.name] = {"offset": 0.0, "final_keep_before": before, "final_keep_after": before, "gates": 0}
            continue
        base = {n: gated.gates[n].log_alpha.detach().clone() for n in names}

        def shift(delta: float) -> None:
            with torch.no_grad():
                for n in names:
                    gated.gates[n].log_alpha.copy_(base[n] + delta)

        def largest(lo: float, hi: float) -> float:  # largest offset in [lo, hi] whose final cost fits
            for _ in range(iterations):
                mid = 0.5 * (lo + hi)
                shift(mid)
                if keep() <= b.keep:
                    lo = mid
                else:
                    hi = mid
            return lo

        delta = largest(*((0.0, 30.0) if before <= b.keep else (-30.0, 0.0)))
        shift(delta)
        # a second, upward-only offset on the fine-grained gates (≥ 8 units: FFN units, conv channels) fills what
        # coarse units (a whole head) left below the budget
        fine = [n for n in names if gated.gates[n].log_alpha.numel() >= 8]
        delta_fine = 0.0
        if fine and fine != names:
            base = {n: gated.gates[n].log_alpha.detach().clone() for n in names}
            names_all, names = names, fine
            delta_fine = largest(0.0, 30.0)
            shift(delta_fine)
            names = names_all
        done.update(names)
        info[b.name] = {"offset": delta, "fine_offset": delta_fine, "final_keep_before": before,
                        "final_keep_after": keep(), "gates": len(names)}
    # The offsets decide which units stay; the kept units keep the soft mask values they were trained with (an
    # offset would rescale them all: σ(0.8 (log α + δ)/β) — with δ ≈ −2 that shrinks every kept unit's output by
    # ~20 % per layer and wrecks the model). So: restore log α and pin the eval masks to the calibrated kept sets.
    shifted = {n: g.eval_mask() for n, g in gated.gates.items()}
    for n, g in gated.gates.items():
        with torch.no_grad():
            g.log_alpha.copy_(original[n])
    soft = {n: torch.sigmoid(0.8 * g.log_alpha.detach() / g.beta) for n, g in gated.gates.items()}
    pin_eval_masks(gated, {n: torch.where(shifted[n] != 0, soft[n], torch.zeros_like(soft[n])) for n in shifted})
    return info


def pin_eval_masks(gated: GatedModel, masks: dict[str, torch.Tensor]) -> None:
    """Make ``gated.eval_masks()`` (and so ``final_counts``, ``final_cost``, ``prune``) return ``masks``."""
    fixed = {k: v.detach().clone() for k, v in masks.items()}
    gated.eval_masks = lambda: {k: v.clone() for k, v in fixed.items()}  # type: ignore[method-assign]


def _param_groups(gated: GatedModel, reg: BudgetLagrangian, cfg: Any, opts: PruneOptions) -> list[dict[str, Any]]:
    from speechprune.train.loop import default_param_groups

    groups = default_param_groups(gated.model, cfg)  # model weights (freezing options applied), head at head_lr
    groups.append({"params": list(gated.gate_parameters()), "lr": opts.gate_lr, "weight_decay": 0.0,
                   "name": "gates"})
    if opts.reg_update == "adamw":
        groups.append({"params": list(reg.parameters()), "lr": -opts.reg_lr, "weight_decay": 0.0, "name": "lambda"})
    return groups
