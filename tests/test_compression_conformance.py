"""Every registered compression passes :func:`speechprune.compress.checks.check_compression` (candidate shape,
budget met, export reloads, re-run), on a tiny fine-tuned teacher with options small enough for CI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from speechprune.compress.base import Candidate, Task, Teacher, Workspace, finetune_candidate, methods
from speechprune.compress.checks import check_compression, check_options
from speechprune.models import load_encoder
from speechprune.train.loop import TrainConfig
from speechprune.data.splits import SplitSpec
from tests.test_train import tone_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = TrainConfig(epochs=2, batch_size=4, lr=2e-3, freeze_front_end=False, warmup_ratio=0.0, seed=0)
#: Per method, options that keep the check short (other fields: the method's defaults).
FAST = {
    "truncate": {"tolerance": 100.0},  # the shallowest depth, so there is a candidate
    "removal": {"orders": ["backward"], "min_retained": 0.01},
    "distill": {"mimickers": ["mlp:16:1"], "stage1_epochs": 1, "stage2_epochs": 1},
    "structured": {"budgets": ["macs=0.5"], "epochs": 2, "finetune_epochs": 0},
}


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> tuple[Teacher, Task, Path]:
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("conformance")
    task = Task(tone_dataset(n=30), "word", SplitSpec(seed=0))
    pretrained = lambda: load_encoder("tiny:wav2vec2")  # noqa: E731  (fresh each time: fine-tuning changes it)
    (baseline,) = finetune_candidate(pretrained(), task, Workspace(root, progress=False), TRAIN, "baseline", "unpruned")
    return Teacher(baseline, pretrained), task, root


def test_every_method_has_well_formed_options() -> None:
    for method in methods():
        check_options(method)


@pytest.mark.slow
@pytest.mark.parametrize("name", [m.name for m in methods()])
def test_compression_conforms(setting, name: str) -> None:
    teacher, task, root = setting
    method = next(m for m in methods() if m.name == name)
    options = dataclasses.replace(method.options(), enabled=True, **FAST.get(name, {}))
    out = Workspace(root / name, batch_size=4, progress=False)
    candidates = check_compression(method, teacher, task, out, TRAIN, options)  # every method, re-run included
    assert candidates and all(isinstance(c, Candidate) for c in candidates)
