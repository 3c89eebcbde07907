"""Every supported model family passes the shared conformance suite (``tests/family_checks.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from family_checks import FAMILY_CASES, check_family

from speechprune.models.registry import SUPPORTED_FAMILIES

torch.set_num_threads(1)


def test_every_family_has_a_case() -> None:
    assert {c.removesuffix("-stable") for c in FAMILY_CASES} == set(SUPPORTED_FAMILIES)


@pytest.mark.parametrize("case", FAMILY_CASES)
def test_check_family(case: str, tmp_path: Path) -> None:
    check_family(case, tmp_path)
