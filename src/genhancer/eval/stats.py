"""Paired statistics for before / after comparisons on the same items.

* ``bootstrap_ci``: percentile bootstrap of a mean (seeded). With ``strata`` the statistic
  is the mean of per-stratum means and items are resampled within their stratum, which is
  what MMVP-VLM's ``average_score`` (mean of nine category percentages) needs.
* ``paired_bootstrap_ci``: the same for the per-item difference ``after - before``.
* ``mcnemar_exact``: exact two-sided McNemar test on paired binary outcomes: under the
  null, the discordant pairs split as Binomial(b + c, 1/2); the p-value is twice the
  smaller tail, capped at 1.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class McNemar:
    b: int            # right before, wrong after
    c: int            # wrong before, right after
    p_value: float

    def as_dict(self) -> dict:
        return asdict(self)


def _strata_index(n: int, strata: Sequence[Hashable] | None) -> list[np.ndarray]:
    if strata is None:
        return [np.arange(n)]
    if len(strata) != n:
        raise ValueError(f"strata has {len(strata)} labels for {n} values")
    groups: dict[Hashable, list[int]] = {}
    for i, s in enumerate(strata):
        groups.setdefault(s, []).append(i)
    return [np.asarray(v) for v in groups.values()]


def _stat(values: np.ndarray, groups: list[np.ndarray]) -> float:
    return float(np.mean([values[g].mean() for g in groups]))


def bootstrap_ci(values: Sequence[float], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                 strata: Sequence[Hashable] | None = None) -> Interval:
    """Percentile bootstrap interval of the mean (or of the mean of stratum means)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-D sequence of values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    groups = _strata_index(x.size, strata)
    estimate = _stat(x, groups)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    for r in range(n_resamples):
        stats[r] = np.mean([x[rng.choice(g, size=g.size, replace=True)].mean() for g in groups])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha]) if n_resamples else (estimate, estimate)
    return Interval(estimate, float(low), float(high), confidence, n_resamples)


def paired_bootstrap_ci(before: Sequence[float], after: Sequence[float], n_resamples: int = 1000,
                        confidence: float = 0.95, seed: int = 0,
                        strata: Sequence[Hashable] | None = None) -> Interval:
    """Bootstrap interval of ``mean(after - before)`` over paired items (resampled together)."""
    b = np.asarray(before, dtype=np.float64)
    a = np.asarray(after, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in length: {b.size} before, {a.size} after")
    return bootstrap_ci(a - b, n_resamples=n_resamples, confidence=confidence, seed=seed, strata=strata)


def binom_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p of ``k`` successes in ``n`` fair trials: 2 x the smaller tail, <= 1."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def mcnemar_counts(b: int, c: int) -> McNemar:
    """Exact McNemar test from the two discordant counts."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    return McNemar(int(b), int(c), binom_two_sided_p(min(b, c), b + c))


def mcnemar_exact(before: Sequence[bool], after: Sequence[bool]) -> McNemar:
    """Exact McNemar test on paired binary outcomes (True = right)."""
    if len(before) != len(after):
        raise ValueError(f"paired outcomes differ in length: {len(before)} before, {len(after)} after")
    b = sum(1 for x, y in zip(before, after) if x and not y)
    c = sum(1 for x, y in zip(before, after) if y and not x)
    return mcnemar_counts(b, c)
