"""Every command is a thin wrapper over its function in ``speechprune.api`` (issue 16 item 7): each command is
invoked with its function replaced by a recorder, and must call it, with the options dataclass built from its flags,
before doing any work of its own. A command that goes back to doing the work itself fails here."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from speechprune import api
from speechprune.analysis.runner import AnalysisConfig
from speechprune.cli.app import app
from speechprune.compress.distill.train import DistillConfig
from speechprune.compress.structured.train import PruneOptions
from speechprune.data.splits import SplitOptions
from speechprune.train.loop import TrainConfig


class Called(Exception):
    """Raised by the recorder in place of the API function's work."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__("called")
        self.args_, self.kwargs = args, kwargs


def _recorder(*args: Any, **kwargs: Any) -> None:
    raise Called(args, kwargs)


#: command line (OUT is replaced by a fresh path) -> (api function, what its positional arguments must hold)
COMMANDS: dict[str, tuple[list[str], str, dict[int, Any]]] = {
    "finetune": (["finetune", "M", "D", "-l", "y", "-o", "OUT", "--epochs", "3"], "finetune",
                 {1: "D", 2: "y", 4: TrainConfig(epochs=3), 5: SplitOptions()}),
    "analyze": (["analyze", "M", "D", "-l", "y", "-o", "OUT", "--knn-k", "4"], "analyze",
                {3: AnalysisConfig(labels=["y"], knn_k=4)}),
    "evaluate": (["evaluate", "M", "D", "-l", "y", "--test-groups", "1,2"], "evaluate",
                 {2: "y", 3: SplitOptions(test_groups=["1", "2"])}),
    "prune layers": (["prune", "layers", "M", "-o", "OUT", "--keep", "2"], "prune_layers",
                     {2: api.LayerPruneOptions(keep=2), 3: SplitOptions()}),
    "prune structured": (["prune", "structured", "M", "D", "-l", "y", "-o", "OUT", "-b", "size=0.4"],
                         "prune_structured", {4: PruneOptions(budgets="size=0.4"), 5: TrainConfig(),
                                              6: SplitOptions()}),
    "distill": (["distill", "M", "D", "-l", "y", "-o", "OUT", "--hidden", "16"], "distill", {}),
    "run": (["run", "model=M", "data=D", "label=y", "out=OUT"], "run", {0: None, 1: ["model=M", "data=D", "label=y"]}),
    "extract": (["extract", "M", "D", "-l", "y", "--layers", "0,2", "-o", "OUT"], "extract", {1: "D"}),
    "profile": (["profile", "M", "--seconds", "2"], "profile", {}),
    "export onnx": (["export", "onnx", "M", "OUT", "--opset", "18"], "export_onnx", {1: "OUT"}),
}
#: Keyword arguments a command must pass on from its flags (for the functions without an options dataclass).
KEYWORDS = {"extract": {"labels": ["y"], "layers": [0, 2]}, "profile": {"seconds": 2.0}, "export onnx": {"opset": 18}}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_calls_its_api_function(command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    argv, function, expected = COMMANDS[command]
    out = str(tmp_path / "out")
    argv = [a.replace("OUT", out) for a in argv]
    monkeypatch.setattr(api, function, _recorder)
    result = CliRunner().invoke(app, argv)
    assert isinstance(result.exception, Called), (f"`speechprune {command}` did not call api.{function}: "
                                                  f"{result.exception!r}\n{result.output}")
    args = result.exception.args_
    assert args[0] in ("M", None), args
    for i, value in expected.items():
        if value == "OUT":  # an output path, given as the flag's type (str or Path)
            assert str(args[i]) == out, f"argument {i} of api.{function}"
            continue
        if i == 1 and command == "run":
            value = [*value, f"out={out}"]
        assert args[i] == value, f"argument {i} of api.{function}"
    for name, value in KEYWORDS.get(command, {}).items():
        assert result.exception.kwargs[name] == value, f"api.{function}({name}=...)"
    assert not (tmp_path / "out").exists(), "the command wrote something before calling its API function"


def test_distill_builds_the_distill_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The distil command's flags reach the API as one DistillConfig (its stages are TrainConfigs)."""
    monkeypatch.setattr(api, "distill", _recorder)
    result = CliRunner().invoke(app, ["distill", "M", "D", "-l", "y", "-o", str(tmp_path / "out"), "--hidden", "16",
                                      "--stage1-epochs", "2"])
    cfg = result.exception.args_[4]
    assert isinstance(cfg, DistillConfig) and cfg.hidden == 16 and cfg.stage1.epochs == 2
    assert cfg.stage2.epochs == DistillConfig().stage2.epochs


#: Commands without a function of their own: ``info`` lists families, ``import-ct2`` converts a foreign format
#: (``speechprune.importers.ct2``), ``demo`` runs a fixed ``run`` on generated data.
WITHOUT_API = {"info", "import-ct2", "demo"}


def test_every_command_is_covered() -> None:
    from tests.test_option_defaults import COMMANDS_FOUND

    assert set(COMMANDS_FOUND) == set(COMMANDS) | WITHOUT_API
