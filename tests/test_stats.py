"""Intervals, paired differences and the chance test of :mod:`speechprune.utils.stats`."""

from __future__ import annotations

import numpy as np
import pytest

from speechprune.utils.stats import (
    above_chance,
    accuracy_interval,
    chance_level,
    exact_interval,
    loss_verdict,
    paired_difference,
    wilson_interval,
)


def test_known_binomial_case_80_of_100() -> None:
    for lo, hi in (wilson_interval(80, 100), exact_interval(80, 100)):
        assert lo == pytest.approx(0.71, abs=0.02) and hi == pytest.approx(0.87, abs=0.02)
    res = accuracy_interval([True] * 80 + [False] * 20)
    assert res["n"] == 100 and res["accuracy"] == 0.8
    assert res["low"] == pytest.approx(0.711, abs=0.002) and res["high"] == pytest.approx(0.867, abs=0.002)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_grouped_interval_is_wider_when_groups_differ() -> None:
    # 10 speakers of 10 clips; half the speakers are always right, half are at 60 %: clips are not independent
    correct = np.concatenate([np.ones(10) if s % 2 else (np.arange(10) < 6) for s in range(10)])
    groups = np.repeat([f"s{s}" for s in range(10)], 10)
    clip = accuracy_interval(correct)
    grouped = accuracy_interval(correct, groups)
    assert "cluster bootstrap over 10 groups" in grouped["method"]
    assert grouped["high"] - grouped["low"] > clip["high"] - clip["low"]
    few = accuracy_interval(correct[:30], groups[:30])  # 3 groups: the bootstrap is not trusted, Wilson + note
    assert few["method"].startswith("Wilson") and "only 3 group" in few["note"]


def test_paired_bootstrap_and_verdicts() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(200) < 0.8
    same = paired_difference(base, base)
    # identical predictions on 200 clips: no disagreement, yet a loss rate up to the Wilson bound of 0/200 (1.9 %)
    # cannot be excluded — "no loss" needs a margin at least that wide
    assert same["difference_low"] == pytest.approx(-0.0188, abs=1e-3) and same["retained"] == 1.0
    assert loss_verdict(same["difference_low"], same["difference_high"]) == "inconclusive"
    assert loss_verdict(same["difference_low"], same["difference_high"], margin=0.02) == "no loss"
    few = paired_difference(base[:9], base[:9])  # 9 clips prove nothing
    assert loss_verdict(few["difference_low"], few["difference_high"], margin=0.05) == "inconclusive"
    worse = base.copy()
    worse[np.flatnonzero(base)[:40]] = False  # 40 of 200 clips newly wrong
    d = paired_difference(worse, base)
    assert d["difference"] == pytest.approx(-0.2) and d["difference_high"] < 0
    assert loss_verdict(d["difference_low"], d["difference_high"]) == "loss"
    a_bit = base.copy()
    a_bit[np.flatnonzero(base)[:2]] = False  # 2 clips: cannot tell
    d = paired_difference(a_bit, base)
    assert d["difference_low"] < 0 <= d["difference_high"] + 1e-12
    assert loss_verdict(d["difference_low"], d["difference_high"]) == "inconclusive"
    assert loss_verdict(d["difference_low"], d["difference_high"], margin=0.05) == "no loss"
    assert d["retained_low"] < d["retained"] <= d["retained_high"] + 1e-12


def test_chance_guard() -> None:
    y = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    assert chance_level(y)["majority"] == 0.5
    always_a = above_chance(y, ["a"] * 100)
    assert not always_a["above_chance"] and always_a["chance"]["level"] == 0.5
    rng = np.random.default_rng(1)
    guess = above_chance(y, rng.permutation(y))
    assert not guess["above_chance"]
    good = y.copy()
    good[:10] = "b"  # 90 % correct
    assert above_chance(y, good)["above_chance"]
