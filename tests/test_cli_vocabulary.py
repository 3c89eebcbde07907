"""One CLI vocabulary (issue 17): every subcommand is walked, and an option that means the same thing has the same
name, short flag and default everywhere; precision speaks ``fp32 | bf16 | fp16``; training flags name their
transformers equivalent; help renders without type tags on flags and without a cut-off summary."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from speechprune.cli.app import app

runner = CliRunner()

#: parameter name -> (flags it must have, default). ``...`` = required.
SHARED: dict[str, tuple[set[str], Any]] = {
    "device": ({"--device"}, "auto"),
    "seed": ({"--seed"}, 0),
    "group": ({"--group"}, None),
    "audio_column": ({"--audio-column"}, None),
    "report_to": ({"--report-to"}, "none"),
    "progress": ({"--progress", "--no-progress"}, True),
    "overwrite": ({"--overwrite", "--no-overwrite"}, False),
    "resume": ({"--resume", "--no-resume"}, False),
    "split_column": ({"--split-column"}, None),
    "test_fraction": ({"--test-fraction"}, 0.2),
    "val_fraction": ({"--val-fraction"}, 0.1),
}
#: ``-l/--label`` wherever a command takes label columns; ``-o/--out`` wherever it writes a folder.
SHORT = {"label": {"-l", "--label"}, "out": {"-o", "--out"}}
#: Commands whose ``--out`` is a required output folder (they make a model or a results folder), and those where
#: it is an optional extra copy/file (extract: features stay in the cache; evaluate: JSON also on stdout;
#: demo: the offline main job runs with no argument at all, so its folder has a default).
OUT_REQUIRED = {"analyze", "finetune", "distill", "prune layers", "prune structured"}
OUT_OPTIONAL = {"extract", "evaluate", "demo", "export onnx"}
#: Commands that read labelled audio take ``--audio-column``; training commands take ``--report-to``.
READS_DATA = {"extract", "analyze", "finetune", "evaluate", "distill", "prune structured", "prune layers"}
TRAINS = {"finetune", "distill", "prune structured"}
PRECISION = {"dtype", "mixed_precision"}
#: Training flag -> the transformers ``TrainingArguments`` field its help must name.
HF_NAMES = {"epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size", "lr": "learning_rate",
            "grad_accum": "gradient_accumulation_steps", "weight_decay": "weight_decay",
            "warmup_ratio": "warmup_ratio", "schedule": "lr_scheduler_type", "seed": "seed",
            "report_to": "report_to", "resume": "resume_from_checkpoint", "out": "output_dir",
            "mixed_precision": "bf16", "patience": "early_stopping_patience"}


def _walk(group: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            out.update(_walk(cmd, f"{prefix}{name} "))
        else:
            out[f"{prefix}{name}"] = cmd
    return out


COMMANDS = _walk(typer.main.get_command(app))


def _options(command: str) -> dict[str, Any]:
    return {p.name: p for p in COMMANDS[command].params if p.param_type_name == "option"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_shared_options_have_one_name_and_default(command: str) -> None:
    for name, p in _options(command).items():
        if name in SHARED:
            flags, default = SHARED[name]
            assert set(p.opts) | set(p.secondary_opts) == flags, f"{command}: {name} is spelled {p.opts}"
            assert p.default == default, f"{command} {sorted(flags)[0]}: default {p.default!r}, expected {default!r}"
        if name in SHORT:
            assert SHORT[name] <= set(p.opts), f"{command}: {name} should be {sorted(SHORT[name])}, got {p.opts}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_outputs_data_and_training_flags(command: str) -> None:
    opts = _options(command)
    if "out" in opts:
        assert command in OUT_REQUIRED | OUT_OPTIONAL, f"{command}: classify its --out"
        assert opts["out"].required == (command in OUT_REQUIRED), f"{command} --out required?"
    if command in READS_DATA:
        assert "audio_column" in opts, f"{command} reads audio but has no --audio-column"
    if command in TRAINS:
        assert "report_to" in opts, f"{command} trains but has no --report-to"
    for name in PRECISION & set(opts):
        assert re.search(r"fp32 \| bf16 \| fp16|fp32 \| bf16", opts[name].help or ""), \
            f"{command} --{name}: help must speak fp32 | bf16 | fp16"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_training_flags_name_the_transformers_equivalent(command: str) -> None:
    if command not in TRAINS:
        return
    for name, p in _options(command).items():
        if name in HF_NAMES:
            assert HF_NAMES[name] in (p.help or ""), f"{command} --{name}: help should name {HF_NAMES[name]}"


def test_precision_vocabulary_is_accepted_everywhere() -> None:
    from speechprune.train.loop import TrainConfig
    from speechprune.utils.precision import normalize_precision

    for value in ("fp32", "bf16", "fp16"):
        assert normalize_precision(value) == value
        TrainConfig(mixed_precision=value).validate()
    assert normalize_precision("no") == normalize_precision("float32") == "fp32"
    assert normalize_precision("bfloat16") == "bf16" and normalize_precision("float16") == "fp16"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_renders_cleanly(command: str) -> None:
    res = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output and "<str>" not in res.output


def test_group_help_summaries_are_whole_sentences() -> None:
    res = runner.invoke(app, ["prune", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for line in res.output.splitlines():
        assert not line.rstrip(" │").endswith(("of:", ":")), f"cut-off summary: {line.strip()}"


def test_profile_numbers_layers_from_one() -> None:
    """Layer i is encoder.layers[i-1] (its output is state i) in the profile too, not a 0-based list index."""
    from speechprune.models import load_encoder
    from speechprune.profile.macs import mac_breakdown

    enc = load_encoder("tiny:wav2vec2")
    rows = mac_breakdown(enc.model, 16_000)["layers"]
    assert [r["layer"] for r in rows] == list(range(1, enc.num_layers + 1))


def test_run_without_a_recommendation_says_why_instead_of_crashing(tmp_path, monkeypatch) -> None:
    """The chance guard may recommend nothing; `run` then prints the reason (it used to end in StopIteration)."""
    import speechprune.pipeline as pipeline
    from speechprune.data.sources import write_audiofolder
    from tests.test_train import tone_dataset

    data = write_audiofolder(tone_dataset(n=12), tmp_path / "data")
    message = "the unpruned model is not above chance on the validation split"
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg, **kw: {
        "candidates": [{"name": "baseline", "recommended": False}],
        "evidence": {"chance_guard": {"message": message}}})
    res = runner.invoke(app, ["run", "model=tiny:wav2vec2", f"data={data}", "label=word", f"out={tmp_path / 'r'}"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # rich wraps long lines
    assert "no model is recommended" in said and message in said
