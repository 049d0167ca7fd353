"""Ratio metrics kept per sample, so every value can carry its interval and be read per slice.

A ratio metric is sum(numerator) / sum(denominator) over samples: CER is edits over reference
characters, exact match is matching lines over lines, mean IoU is IoU over 1 per page. Keeping each
sample's (numerator, denominator) instead of running sums costs a few numbers a sample and gives
three things sums cannot: a bootstrap over samples, the same numbers for any subset (a slice, the
lines FP32 reads confidently), and the sample count behind each value.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from quant.intervals import Interval, Method, bootstrap_ratio, rate_interval
from quant.metrics.catalogue import CATALOGUE, INTERVAL_METRICS


def interval_method(metric: str) -> Method | None:
    """The interval a gate on `metric` would be judged by (for the sample-count check); None: no interval."""
    kind = CATALOGUE[metric].interval if metric in CATALOGUE else None
    return None if kind is None else ("wilson" if kind == "rate" else "bootstrap")


@dataclass
class SampleParts:
    """One sample's (numerator, denominator) of every ratio metric it contributes to."""

    id: str
    slice: str | None = None
    parts: dict[str, tuple[float, float]] = field(default_factory=dict)

    def add(self, metric: str, numerator: float, denominator: float) -> None:
        num, den = self.parts.get(metric, (0.0, 0.0))
        self.parts[metric] = (num + numerator, den + denominator)


@dataclass(frozen=True)
class Estimate:
    value: float
    interval: Interval

    def to_dict(self) -> dict[str, object]:
        return {"value": round(self.value, 6) if math.isfinite(self.value) else str(self.value), **self.interval.to_dict()}


def estimate(rows: Iterable[SampleParts], metric: str, seed: int = 0) -> Estimate | None:
    """The metric over `rows` with its 95 % interval; None when no row has a part of it."""
    pairs = [row.parts[metric] for row in rows if metric in row.parts]
    if not pairs:
        return None
    numerators, denominators = [p[0] for p in pairs], [p[1] for p in pairs]
    total = sum(denominators)
    value = sum(numerators) / total if total else math.nan
    if CATALOGUE[metric].interval == "rate":
        interval = rate_interval([int(n) for n in numerators], [int(d) for d in denominators], seed=seed)
    else:
        interval = bootstrap_ratio(numerators, denominators, seed=seed)
    return Estimate(value, interval)


def estimates(rows: list[SampleParts], seed: int = 0) -> dict[str, Estimate]:
    """Every ratio metric present in `rows`."""
    present = {metric for row in rows for metric in row.parts}
    found = {metric: estimate(rows, metric, seed) for metric in INTERVAL_METRICS if metric in present}
    return {metric: e for metric, e in found.items() if e is not None}


def by_slice(rows: list[SampleParts]) -> dict[str, list[SampleParts]]:
    """Rows grouped by their slice (rows without one are left out), slices in sorted order."""
    groups: dict[str, list[SampleParts]] = defaultdict(list)
    for row in rows:
        if row.slice is not None:
            groups[row.slice].append(row)
    return dict(sorted(groups.items()))
