"""How sure a measured value is: 95 % intervals, and whether a sample count can support a threshold.

Two kinds of interval, chosen by how the value is made:
- a rate of independent yes/no samples (one agreement per sample): the Wilson score interval,
  which stays inside [0, 1] and keeps its coverage near 0 and 1, where the Wald interval fails;
- anything else computed from per-sample parts (CER = edits / characters, mean IoU, the label-CER
  delta, agreement of frames grouped in lines): a seeded percentile bootstrap over *samples*,
  so the parts of one sample (frames of one line) stay together and their correlation is respected.

numpy only (scipy is an optional extra); the tests check the Wilson bounds against scipy's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

LEVEL = 0.95
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
RESAMPLES = 2000
# A percentile bootstrap over fewer samples than this does not keep its coverage; a gate that needs
# one is a recipe error rather than a verdict nobody should trust.
MIN_BOOTSTRAP_SAMPLES = 20

Method = Literal["wilson", "bootstrap", "exact", "signed_rank", "sign_test"]


@dataclass(frozen=True)
class Interval:
    """A 95 % interval of a measured value, and how many samples it rests on."""

    low: float
    high: float
    samples: int
    method: Method

    def clears(self, minimum: float | None, maximum: float | None) -> bool:
        """The whole interval is on the good side of every bound."""
        return (minimum is None or self.low >= minimum) and (maximum is None or self.high <= maximum)

    def misses(self, minimum: float | None, maximum: float | None) -> bool:
        """The whole interval is on the bad side of some bound."""
        return (minimum is not None and self.high < minimum) or (maximum is not None and self.low > maximum)

    def straddles(self, minimum: float | None, maximum: float | None) -> bool:
        return not self.clears(minimum, maximum) and not self.misses(minimum, maximum)

    def to_dict(self) -> dict[str, float | int | str]:
        return {"low": round(self.low, 6), "high": round(self.high, 6), "samples": self.samples, "method": self.method}

    def describe(self, spec: str = ".4g") -> str:
        return f"[{self.low:{spec}}, {self.high:{spec}}] n={self.samples}"


def wilson(successes: int, trials: int, z: float = Z95) -> Interval:
    """Wilson score interval of a proportion."""
    if trials <= 0:
        return Interval(math.nan, math.nan, 0, "wilson")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # Clamped: rounding can put the bound a hair outside [0, 1] at p = 0 or 1.
    return Interval(max(0.0, centre - half), min(1.0, centre + half), trials, "wilson")


def _percentile_interval(statistics: np.ndarray, samples: int) -> Interval:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(statistics, [tail, 100 - tail])
    return Interval(float(low), float(high), samples, "bootstrap")


def resample_indices(samples: int, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """(resamples, samples) indices drawn with replacement; the same seed gives the same draws."""
    return np.random.default_rng(seed).integers(0, samples, size=(resamples, samples))


def bootstrap_ratio(numerators: Sequence[float], denominators: Sequence[float], *, seed: int = 0, resamples: int = RESAMPLES) -> Interval:
    """Interval of sum(numerators) / sum(denominators), resampling samples (pairs stay together).

    CER is edits / reference characters over all lines; a mean is the ratio with denominators of 1."""
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"numerators {num.shape} and denominators {den.shape} must be 1-D and of one length")
    if num.size == 0:
        return Interval(math.nan, math.nan, 0, "bootstrap")
    if np.all(num * den[0] == num[0] * den):  # every sample has the same ratio: nothing varies
        value = float(num.sum() / den.sum()) if den.sum() else math.nan
        return Interval(value, value, int(num.size), "bootstrap")
    index = resample_indices(num.size, seed, resamples)
    totals = den[index].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        statistics = num[index].sum(axis=1) / totals
    return _percentile_interval(statistics[np.isfinite(statistics)], int(num.size))


def bootstrap_mean(values: Sequence[float], *, seed: int = 0, resamples: int = RESAMPLES) -> Interval:
    return bootstrap_ratio(values, [1.0] * len(values), seed=seed, resamples=resamples)


def rate_interval(hits: Sequence[int], totals: Sequence[int], *, seed: int = 0) -> Interval:
    """Interval of sum(hits) / sum(totals): Wilson when each sample is one yes/no, else a bootstrap over samples.

    (Frames of one text line are not independent trials; counting them as such would make the
    interval far too narrow.)"""
    if all(t == 1 for t in totals):
        return wilson(int(sum(hits)), len(totals))
    return bootstrap_ratio(hits, totals, seed=seed)


def paired_statistic_interval(
    first: Sequence[float],
    second: Sequence[float],
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> Interval:
    """Bootstrap interval of statistic(first[rows], second[rows]) resampling paired rows.

    `statistic` takes two (resamples, n) arrays and returns (resamples,) values (e.g. a ratio of medians)."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.size == 0:
        return Interval(math.nan, math.nan, 0, "bootstrap")
    index = resample_indices(a.size, seed, resamples)
    return _percentile_interval(np.asarray(statistic(a[index], b[index])), int(a.size))


# --------------------------------------------------------------------------- can n support a threshold?


def wilson_samples_needed(minimum: float | None, maximum: float | None) -> int:
    """Fewest samples whose *best possible* Wilson interval clears the bounds of a rate in [0, 1].

    The best case for a lower bound is every sample agreeing: the interval's low end is then
    n / (n + z²), which reaches `minimum` only from n >= minimum·z² / (1 - minimum). Symmetrically
    for an upper bound with no sample agreeing. A bound of 1 (or 0) can never be cleared by an interval."""
    needed = 1
    z2 = Z95 * Z95
    if minimum is not None and minimum > 0:
        needed = max(needed, math.inf if minimum >= 1 else math.ceil(minimum * z2 / (1 - minimum) - 1e-9))
    if maximum is not None and maximum < 1:
        needed = max(needed, math.inf if maximum <= 0 else math.ceil((1 - maximum) * z2 / maximum - 1e-9))
    return needed  # type: ignore[return-value]  # math.inf when no count can do it


def unsupported_reason(method: Method, samples: int, minimum: float | None, maximum: float | None) -> str | None:
    """Why `samples` can never make a 95 % interval clear these bounds; None when they can."""
    if method == "wilson":
        needed = wilson_samples_needed(minimum, maximum)
        if samples < needed:
            need = "no number of samples" if math.isinf(needed) else f"at least {needed} samples"
            bound = f">= {minimum:g}" if minimum is not None else f"<= {maximum:g}"
            return f"with {samples} samples even a perfect result's 95 % interval cannot be {bound} ({need} needed)"
        return None
    if method == "bootstrap" and samples < MIN_BOOTSTRAP_SAMPLES:
        return f"a bootstrap interval over {samples} samples is not a 95 % interval (at least {MIN_BOOTSTRAP_SAMPLES} needed)"
    return None
