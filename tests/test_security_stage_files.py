"""Stage files (``OUT/stages/*.json``) are data, never code (issue 15 item 1, issue 16 item 1).

A re-run reads them back, so whoever can write a run folder must not be able to make speechprune import or call
anything: a tampered ``cost_fn`` (which once named a ``module:function`` the profile stage imported and called) is
ignored, and a candidate that is not a candidate fails with a clear error naming the stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechprune.data.sources import write_audiofolder
from speechprune.errors import SpeechpruneError
from speechprune.pipeline import load_run_config, run_pipeline
from tests.test_train import tone_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(data: Path, out: Path, *extra: str):
    return load_run_config(None, [
        "model=tiny:wav2vec2", f"data={data}", "label=word", "group=speaker", "split.test_groups=4", "train.epochs=1",
        "analysis.enabled=false", "compress.truncate.enabled=false", "compress.removal.enabled=false",
        f"out={out}", "latency_repeats=1", "export.onnx=false", *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stagefiles")
    data = write_audiofolder(tone_dataset(n=30), root / "data")
    run_pipeline(_config(data, root / "run"), progress=False, log=lambda _m: None)
    return data, root / "run"


def _tamper(run: Path, edit) -> None:
    path = run / "stages" / "baseline.json"
    saved = json.loads(path.read_text())
    edit(saved["result"]["candidates"][0])
    path.write_text(json.dumps(saved))


def test_a_tampered_cost_fn_runs_no_code(finished_run, tmp_path: Path) -> None:
    data, run = finished_run
    model = run / "models" / "baseline"
    assert (model / "config.json").is_file()
    _tamper(run, lambda cand: cand.update(cost_fn="shutil:rmtree"))
    # a new clip length forces the profile stage to measure every candidate again
    report = run_pipeline(_config(data, run, "profile_seconds=0.5"), progress=False, log=lambda _m: None)
    assert "profile" in report["stages_run"] and "baseline" in report["stages_reused"]
    assert (model / "config.json").is_file(), "the tampered stage file deleted the model folder"
    (base,) = report["candidates"]
    assert base["name"] == "baseline" and base["params_m"] > 0  # measured the ordinary way


def test_a_candidate_that_is_not_one_fails_clearly(finished_run) -> None:
    data, run = finished_run
    _tamper(run, lambda cand: cand.pop("model_dir"))
    with pytest.raises(SpeechpruneError, match="stage 'baseline'.*model_dir"):
        run_pipeline(_config(data, run, "profile_seconds=0.25"), progress=False, log=lambda _m: None)
