"""The statistics of a project over seeds and of a step between projects (cnnlab.run.seeds), on inputs whose
answers are known by hand (Student's t quantiles from the table: t(0.975, 2) = 4.302653, t(0.975, 4) = 2.776445)."""

from __future__ import annotations

import math

import pytest

from cnnlab.run.seeds import step, summarize


def test_a_summary_is_mean_sample_std_and_the_t_interval() -> None:
    s = summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std, s.min, s.max) == (3, 2.0, 1.0, 1.0, 3.0)
    half = 4.302653 / math.sqrt(3)
    assert s.low == pytest.approx(2 - half, abs=1e-5) and s.high == pytest.approx(2 + half, abs=1e-5)
    assert s.holds(4.0) and not s.holds(4.5)
    assert s.as_metrics("test_accuracy")["test_accuracy_std"] == 1.0


def test_one_seed_has_no_spread_and_no_interval() -> None:
    s = summarize([77.29])
    assert (s.n, s.mean, s.std, s.low, s.high) == (1, 77.29, None, None, None)
    assert s.holds(77.29) is None and set(s.as_metrics("a")) == {"a_mean", "a_n", "a_min", "a_max"}
    with pytest.raises(ValueError):
        summarize([])


def test_welch_step_improvement_regression_and_not_resolved() -> None:
    # equal variances and sizes: Welch's degrees of freedom are 4, the standard error sqrt(1/3 + 1/3)
    up = step("p00", "p01", [1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    half = 2.776445 * math.sqrt(2 / 3)
    assert up.difference == 3.0 and up.low == pytest.approx(3 - half, abs=1e-5)
    assert up.high == pytest.approx(3 + half, abs=1e-5) and up.verdict == "improvement"
    assert up.p_value == pytest.approx(0.02131, abs=1e-4)
    assert step("a", "b", [4.0, 5.0, 6.0], [1.0, 2.0, 3.0]).verdict == "regression"
    unsure = step("a", "b", [1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert unsure.verdict == "not resolved with 3 seeds" and unsure.low < 0 < unsure.high


def test_a_step_with_one_seed_on_a_side_is_never_resolved() -> None:
    one = step("p09", "p10", [79.45], [77.69, 79.14])
    assert one.low is None and one.verdict == "not resolved: 1 seed (needs 2 on each side)"
    assert one.difference == pytest.approx((77.69 + 79.14) / 2 - 79.45)


def test_sides_without_spread_are_equal_or_certainly_apart() -> None:
    assert step("a", "b", [1.0, 1.0], [1.0, 1.0]).verdict == "not resolved with 2 seeds"
    assert step("a", "b", [1.0, 1.0], [2.0, 2.0]).verdict == "improvement"
