"""Compressions are plug-ins (issue 16): ``run_pipeline`` names no method, a toy method registered from outside
shows up in ``run``'s config, stages, candidates and report, and every stage file is plain data."""

from __future__ import annotations

import inspect
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from speechprune.compress import base
from speechprune.compress.base import Candidate, Compression
from speechprune.data.sources import write_audiofolder
from speechprune.pipeline import load_run_config, run_pipeline
from speechprune.pipeline import runner
from tests.test_train import tone_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class ToyOptions:
    enabled: bool = True
    suffix: str = "copy"


class Toy(Compression):
    """Copies the baseline: the smallest method there is."""

    name = "toy"
    options = ToyOptions
    inputs = ("baseline",)

    def run(self, teacher, task, out, train, options):
        path = out.model_dir(f"toy-{options.suffix}")
        shutil.copytree(teacher.baseline.model_dir, path, dirs_exist_ok=True)
        out.details["seen_label"] = task.label
        return [Candidate(f"toy-{options.suffix}", "a copy of the baseline", str(path), dict(teacher.baseline.metrics),
                          {"num_layers": teacher.baseline.provenance["num_layers"]}, self.name)]


@pytest.fixture
def toy():
    method = base.register(Toy())
    yield method
    base.unregister(method.name)


def test_run_pipeline_names_no_method() -> None:
    source = inspect.getsource(runner.run_pipeline)
    for method in base.methods():
        assert f'"{method.name}"' not in source and f".{method.name}" not in source, method.name
    assert [m.name for m in base.methods()][:4] == ["truncate", "removal", "distill", "structured"]


def test_a_registered_toy_method_reaches_candidates_and_report(toy, tmp_path: Path) -> None:
    data = write_audiofolder(tone_dataset(n=30), tmp_path / "data")
    cfg = load_run_config(None, [
        "model=tiny:wav2vec2", f"data={data}", "label=word", "group=speaker", "split.test_groups=4",
        "train.epochs=1", "analysis.enabled=false", "compress.truncate.enabled=false",
        "compress.removal.enabled=false", "compress.toy.suffix=x", f"out={tmp_path / 'run'}", "latency_repeats=1",
        "export.onnx=false"])
    assert cfg.compress.toy == ToyOptions(enabled=True, suffix="x")
    report = run_pipeline(cfg, progress=False, log=lambda _m: None)
    assert [c["name"] for c in report["candidates"]] == ["baseline", "toy-x"]
    assert "toy" in report["stages_run"]
    assert "toy-x" in (tmp_path / "run" / "report.md").read_text()
    assert "toy-x" in (tmp_path / "run" / "report.html").read_text()
    stage = json.loads((tmp_path / "run" / "stages" / "toy.json").read_text())["result"]
    assert stage["seen_label"] == "word" and stage["candidates"][0]["name"] == "toy-x"
    # every stage file is plain data: no key or value names code to import
    for path in (tmp_path / "run" / "stages").glob("*.json"):
        text = path.read_text()
        assert "cost_fn" not in text and not re.search(r"speechprune(\.\w+)+:\w+", text), path.name


def test_unknown_compression_section_names_the_registered_ones(tmp_path: Path) -> None:
    from speechprune.pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="compress.prune; allowed at compress: distill, removal"):
        load_run_config(None, ["model=tiny:wav2vec2", f"data={tmp_path}", "label=word", "compress.prune.enabled=1"])


def test_candidate_round_trips_as_flat_data() -> None:
    c = Candidate("s", "structured", "/m", {"accuracy": 0.5, "macro_f1": 0.4}, {"budget_met": True}, "structured")
    d = c.to_dict()
    assert d == {"name": "s", "kind": "structured", "model_dir": "/m", "accuracy": 0.5, "macro_f1": 0.4,
                 "budget_met": True}
    assert Candidate.from_dict(d, "structured") == c
    assert Candidate.from_dict({**d, "cost_fn": "shutil:rmtree"}, "structured") == c


def test_removal_default_orders_are_all_orders() -> None:
    from speechprune.compress.layers import ORDERS
    from speechprune.compress.methods.removal import RemovalOptions

    assert RemovalOptions().orders == list(ORDERS)
