"""A project over several seeds as one figure with its spread, and the step from one project to the next as a
difference that is resolved or not.

Two seeds of P10 differed by 1.45 points and two runs of P07 (on two machines) by 1.27, while several of the
source's steps are smaller than that: one run per project cannot say which changes helped. So every figure here
says how many seeds it rests on: the mean with the sample standard deviation, the 95 % confidence interval of the
mean (Student's t), min and max; and a step's verdict comes from Welch's t-test (unequal variances; scipy), whose
95 % interval of the difference of means decides it: above 0 an improvement, below 0 a regression, else not
resolved with these seeds. With one seed on either side nothing is resolved."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Summary:
    """A metric over a project's seeds."""

    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for one seed
    low: float | None  # the 95 % confidence interval of the mean; None for one seed
    high: float | None
    min: float
    max: float

    def holds(self, value: float) -> bool | None:
        """Whether `value` lies inside the interval (None when there is none)."""
        return None if self.low is None else self.low <= value <= self.high

    def as_metrics(self, name: str) -> dict[str, float]:
        """As flat metrics (`<name>_mean`, `_std`, `_n`, ...), for a tracking store."""
        found = {"mean": self.mean, "n": self.n, "min": self.min, "max": self.max, "std": self.std,
                 "ci95_low": self.low, "ci95_high": self.high}
        return {f"{name}_{k}": float(v) for k, v in found.items() if v is not None}


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarize")
    n, mean = len(values), sum(values) / len(values)
    if n == 1:
        return Summary(1, mean, None, None, None, values[0], values[0])
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    if std == 0:
        low = high = mean
    else:
        low, high = stats.t.interval(LEVEL, n - 1, loc=mean, scale=std / math.sqrt(n))
    return Summary(n, mean, std, float(low), float(high), min(values), max(values))


@dataclass(frozen=True)
class Step:
    """From project `before` to `after`: the difference of their means, its 95 % interval and the verdict."""

    before: str
    after: str
    difference: float
    low: float | None
    high: float | None
    p_value: float | None
    verdict: str


def step(before: str, after: str, a: Sequence[float], b: Sequence[float]) -> Step:
    """Welch's t-test of `b` (the later project's seeds) against `a`: the difference of means b - a, its interval
    from the Welch-Satterthwaite degrees of freedom, and improvement / regression / not resolved."""
    difference = sum(b) / len(b) - sum(a) / len(a)
    if len(a) < 2 or len(b) < 2:
        return Step(before, after, difference, None, None, None,
                    f"not resolved: {min(len(a), len(b))} seed{'s' if min(len(a), len(b)) != 1 else ''} "
                    "(needs 2 on each side)")
    if len(set(a)) == 1 and len(set(b)) == 1:  # both sides without spread: equal, or apart with certainty
        low = high = difference
        p_value = 1.0 if difference == 0 else 0.0
    else:
        test = stats.ttest_ind(b, a, equal_var=False)
        interval = test.confidence_interval(LEVEL)
        low, high, p_value = float(interval.low), float(interval.high), float(test.pvalue)
    n = min(len(a), len(b))
    verdict = "improvement" if low > 0 else "regression" if high < 0 else f"not resolved with {n} seeds"
    return Step(before, after, difference, low, high, p_value, verdict)
