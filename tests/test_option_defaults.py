"""Every default has one home (issue 16 item 2): the options dataclass of its command or method. This walks every
subcommand of the CLI and holds each flag's default to the dataclass field it fills, so a default changed in one
place and not the other fails here; the ``run`` config sections are checked against the same dataclasses."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import typer

from speechprune.analysis.runner import AnalysisConfig
from speechprune.api import LayerPruneOptions
from speechprune.cli.app import app
from speechprune.compress.distill.train import DistillConfig
from speechprune.compress.structured.train import PruneOptions
from speechprune.train.loop import TrainConfig
from speechprune.data.splits import SplitSpec

SPLIT = {name: f"split.{name}" for name in ("split_column", "test_groups", "val_groups", "test_fraction",
                                             "val_fraction", "seed")}
TRAIN_FLAGS = ("epochs", "batch_size", "grad_accum", "lr", "head_lr", "weight_decay", "schedule", "warmup_ratio",
               "freeze_front_end", "freeze_encoder", "patience", "seed", "mixed_precision", "max_seconds", "device",
               "report_to")
TRAIN = {name: f"train.{name}" for name in TRAIN_FLAGS}

#: command -> {flag: "<options>.<field>"} for every flag that fills an options dataclass, and the flags that only
#: say where to read/write or how to report (inputs and outputs, not options of the method).
COMMANDS: dict[str, tuple[dict[str, str], set[str]]] = {
    "finetune": ({**SPLIT, **TRAIN}, {"model", "data", "label", "out", "group", "window", "keep", "resume",
                                      "overwrite", "progress", "config"}),
    "analyze": ({"label": "analysis.labels", **{f: f"analysis.{f}" for f in (
        "metrics", "similarity", "pooling", "layers", "batch_size", "dtype", "device", "knn_k", "convexity_k",
        "max_pairs", "permutations", "probe_folds", "split_column", "test_groups", "seed", "processes",
        "chunk_seconds", "probe", "convexity_max_rows", "chance_pairs")}},
                {"model", "data", "group", "window", "segments_dir", "out", "cache_dir", "overwrite", "progress",
                 "config"}),
    "prune layers": ({**SPLIT, "order": "layers.orders", **{f: f"layers.{f}" for f in (
        "by", "keep", "drop", "no_retrain", "tolerance", "batch_size", "profile_seconds", "influence_clips")}},
                     {"model", "out", "data", "label", "group", "window", "device", "overwrite", "progress",
                      "config"}),
    "prune structured": (
        {**{k: v for k, v in SPLIT.items()}, **{k: v for k, v in TRAIN.items() if k != "freeze_encoder"},
         "budget": "prune.budgets", **{f: f"prune.{f}" for f in (
             "structures", "p0_keep", "gate_lr", "reg_lr", "reg_update", "target_warmup", "distill_weight",
             "finetune_epochs", "calibrate", "tolerance")}},
        {"model", "data", "label", "out", "group", "resume", "overwrite", "progress", "config"}),
    "distill": ({**{k: v for k, v in SPLIT.items() if k != "seed"},
                 **{f: f"distill.{f}" for f in ("mimicker", "hidden", "blocks", "nhead", "intermediate", "positions",
                                                 "freeze_mimicker", "seed")},
                 "stage1_epochs": "distill.stage1.epochs", "stage2_epochs": "distill.stage2.epochs",
                 "lr": "distill.stage1.lr", "batch_size": "distill.stage1.batch_size",
                 "patience": "distill.stage1.patience", "device": "distill.stage1.device",
                 "mixed_precision": "distill.stage1.mixed_precision", "report_to": "distill.stage1.report_to"},
                {"teacher", "data", "label", "group", "window", "latency", "out", "resume", "overwrite", "cache_dir",
                 "progress", "config"}),
    "run": ({}, {"args", "overwrite", "progress"}),  # everything else is the RunConfig, read from YAML / key=value
}
#: Input flags that any command may have (where to read the audio from).
ANY_COMMAND_INPUTS = {"audio_column"}
#: Commands outside issue 16's API (no options dataclass of their own yet).
WITHOUT_OPTIONS = {"info", "extract", "evaluate", "profile", "import-ct2", "demo", "export onnx"}

DEFAULTS: dict[str, Any] = {
    "split": SplitSpec(), "train": TrainConfig(), "analysis": AnalysisConfig(labels=[]), "layers": LayerPruneOptions(),
    "prune": PruneOptions(), "distill": DistillConfig(),
}
#: How a command turns a flag's value into the field's (as in the command's body).
AS_FIELD = {
    ("analyze", "layers"): lambda v: None if v == "all" else v,
    ("analyze", "test_groups"): lambda v: list(v) or None,
}


def _walk(group: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        if hasattr(cmd, "commands"):
            out.update(_walk(cmd, path + " "))
        else:
            out[path] = cmd
    return out


def _field(path: str) -> Any:
    root, *names = path.split(".")
    value = DEFAULTS[root]
    for name in names:
        value = getattr(value, name)
    return value


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


COMMANDS_FOUND = _walk(typer.main.get_command(app))


def test_every_subcommand_is_classified() -> None:
    assert set(COMMANDS_FOUND) == set(COMMANDS) | WITHOUT_OPTIONS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_defaults_are_the_dataclass_defaults(command: str) -> None:
    fields, own = COMMANDS[command]
    params = {p.name: p for p in COMMANDS_FOUND[command].params}
    params = {k: v for k, v in params.items() if k not in ANY_COMMAND_INPUTS}
    assert set(params) == set(fields) | own, "a flag is neither an option field nor an input/output"
    for flag, path in fields.items():
        default = AS_FIELD.get((command, flag), lambda v: v)(params[flag].default)
        assert _norm(default) == _norm(_field(path)), f"{command} --{flag.replace('_', '-')}: {path}"


def test_run_sections_agree_with_the_method_options() -> None:
    from speechprune.compress.layers import ORDERS
    from speechprune.compress.methods.removal import RemovalOptions
    from speechprune.compress.methods.structured import StructuredOptions
    from speechprune.pipeline.config import TrainSection

    structured, prune = StructuredOptions(), PruneOptions()
    for name in ("p0_keep", "gate_lr", "reg_lr", "target_warmup", "finetune_epochs"):
        assert getattr(structured, name) == getattr(prune, name), name
    assert structured.budgets == [prune.budgets]
    assert RemovalOptions().orders == LayerPruneOptions().orders == list(ORDERS)
    # the run's split section is the split module's SplitOptions, whose fields SplitSpec extends
    from speechprune.data.splits import SplitOptions
    from speechprune.pipeline.config import RunConfig

    assert type(RunConfig().split) is SplitOptions and issubclass(SplitSpec, SplitOptions)
    # the run's training section: TrainConfig's fields, with two deliberate run defaults (RUN_TRAIN_DEFAULTS)
    from speechprune.pipeline.config import RUN_TRAIN_DEFAULTS

    train, section = TrainConfig(), TrainSection()
    for f in dataclasses.fields(TrainSection):
        expected = RUN_TRAIN_DEFAULTS.get(f.name, getattr(train, f.name))
        assert getattr(section, f.name) == expected, f.name
