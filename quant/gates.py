"""Gates: thresholds on metrics, and limits on regression against the last release. Judging never writes files."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from quant.intervals import Interval
from quant.metrics.catalogue import TIMED_METRICS, VARIANT_METRICS, badness, kind_metrics
from quant.recipe.schema import Gate, OutputSpec

Verdict = Literal["passed", "failed", "inconclusive"]
REMEASURED = frozenset(TIMED_METRICS)  # measured again while undecided; its interval always decides


@dataclass(frozen=True)
class GateResult:
    metric: str
    output: str | None  # the output the observed value came from (the worst one when the gate named none)
    min: float | None
    max: float | None
    observed: float | None
    passed: bool
    reason: str = ""
    max_regression: float | None = None
    previous: float | None = None  # the last release's value, for regression gates
    must_clear: str = "point"
    interval: Interval | None = None  # 95 % interval of `observed`, with its sample count
    inconclusive: bool = False  # the interval straddles the threshold: neither passed nor failed

    @property
    def verdict(self) -> Verdict:
        return "passed" if self.passed else ("inconclusive" if self.inconclusive else "failed")

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        if isinstance(self.observed, float) and not math.isfinite(self.observed):
            data["observed"] = str(self.observed)
        data["interval"] = self.interval.to_dict() if self.interval else None
        data["verdict"] = self.verdict
        return data

    def describe(self) -> str:
        bounds = [f">= {self.min:g}" if self.min is not None else "", f"<= {self.max:g}" if self.max is not None else ""]
        if self.max_regression is not None:
            bounds.append(
                f"at most {self.max_regression:g} worse than the last release ({'n/a' if self.previous is None else f'{self.previous:.6g}'})"
            )
        where = f"[{self.output}]" if self.output else ""
        observed = "n/a" if self.observed is None else f"{self.observed:.6g}"
        if self.interval is not None:
            observed += f" {self.interval.describe()}"
        needs = " and ".join(b for b in bounds if b) + (", whole interval" if self.must_clear == "interval" else "")
        return f"{self.metric}{where} = {observed} (needs {needs})" + (f": {self.reason}" if self.reason else "")


def overall_verdict(results: list[GateResult]) -> Verdict:
    """A failed gate fails the variant; otherwise an inconclusive one leaves it undecided."""
    if any(r.verdict == "failed" for r in results):
        return "failed"
    return "inconclusive" if any(r.inconclusive for r in results) else "passed"


def effective_gates(recipe_gates: list[Gate], variant_gates: list[Gate]) -> list[Gate]:
    """A variant's gate replaces the recipe-wide gate with the same metric and output."""
    overridden = {g.key for g in variant_gates}
    return [g for g in recipe_gates if g.key not in overridden] + list(variant_gates)


def applicable_outputs(gate: Gate, output_specs: dict[str, OutputSpec], output_names: list[str]) -> list[str]:
    """The outputs a gate reads; empty when none can produce its metric."""
    if gate.metric in VARIANT_METRICS:
        return []
    names = [gate.output] if gate.output else output_names
    return [n for n in names if gate.metric in kind_metrics(output_specs.get(n, OutputSpec()).kind)]


def regression(metric: str, previous: float, current: float) -> float:
    """How much worse `current` is than `previous` (negative: better)."""
    return badness(metric, current) - badness(metric, previous)


def _observed(
    gate: Gate, output_metrics: dict[str, dict[str, float]], variant_metrics: dict[str, float], output_specs: dict[str, OutputSpec]
) -> tuple[str | None, float] | None:
    if gate.metric in VARIANT_METRICS:
        value = variant_metrics.get(gate.metric)
        return None if value is None else (None, value)
    candidates = [
        (name, metrics[gate.metric])
        for name in applicable_outputs(gate, output_specs, list(output_metrics))
        if gate.metric in (metrics := output_metrics.get(name, {}))
    ]
    if not candidates:
        return None
    # The worst value decides: the lowest for a lower bound, the highest for an upper bound.
    if gate.min is not None:
        return min(candidates, key=lambda c: (not math.isnan(c[1]), c[1]))
    if gate.max is not None:
        return max(candidates, key=lambda c: (math.isnan(c[1]), c[1]))
    return max(candidates, key=lambda c: badness(gate.metric, c[1]))


def _interval_verdict(gate: Gate, value: float, interval: Interval | None) -> tuple[bool, bool, str]:
    """(passed, inconclusive, reason) of the bounds, reading the interval where the gate asks for it."""
    point_holds = not math.isnan(value) and (gate.min is None or value >= gate.min) and (gate.max is None or value <= gate.max)
    if gate.min is None and gate.max is None:
        return not math.isnan(value), False, ""
    if interval is not None and gate.metric in REMEASURED:
        if interval.clears(gate.min, gate.max):
            return True, False, ""
        if interval.misses(gate.min, gate.max):
            return False, False, ""
        return False, True, f"the 95 % interval {interval.describe()} still straddles the threshold after the extra rounds"
    if gate.must_clear == "interval":
        if interval is None:
            return False, False, "no interval was measured for this metric"
        if point_holds and not interval.clears(gate.min, gate.max):
            return False, False, f"the value holds but its 95 % interval {interval.describe()} does not"
    return point_holds, False, ""


def judge(
    gate: Gate,
    output_metrics: dict[str, dict[str, float]],
    variant_metrics: dict[str, float],
    output_specs: dict[str, OutputSpec],
    previous: dict[str, dict[str, float]] | None = None,
    intervals: dict[str, dict[str, Interval]] | None = None,
) -> GateResult:
    """Evaluate one gate. `previous` holds the last release's metrics of this variant (by output, plus '' for variant-wide ones);
    `intervals` the 95 % intervals the same way."""
    base = {"metric": gate.metric, "min": gate.min, "max": gate.max, "max_regression": gate.max_regression, "must_clear": gate.must_clear}
    found = _observed(gate, output_metrics, variant_metrics, output_specs)
    if found is None:
        return GateResult(
            output=gate.output, observed=None, passed=False, reason="metric not available (no labels, not measured, or no applicable output)", **base
        )
    output, value = found
    interval = (intervals or {}).get(output or "", {}).get(gate.metric)
    passed, inconclusive, reason = _interval_verdict(gate, value, interval)
    earlier = None
    if gate.max_regression is not None:
        earlier = (previous or {}).get(output or "", {}).get(gate.metric)
        if earlier is None:
            reason = reason or "no earlier release of this variant to compare with"
        elif regression(gate.metric, earlier, value) > gate.max_regression:
            passed, inconclusive = False, False
            reason = f"regressed from {earlier:.6g} in the last release"
    return GateResult(
        output=output, observed=value, passed=passed, reason=reason, previous=earlier, interval=interval, inconclusive=inconclusive, **base
    )


def judge_all(
    gates: list[Gate],
    output_metrics: dict[str, dict[str, float]],
    variant_metrics: dict[str, float],
    output_specs: dict[str, OutputSpec],
    previous: dict[str, dict[str, float]] | None = None,
    intervals: dict[str, dict[str, Interval]] | None = None,
) -> list[GateResult]:
    return [judge(g, output_metrics, variant_metrics, output_specs, previous, intervals) for g in gates]


def latency_bounds(gates: list[Gate], metric: str = "latency_ratio") -> list[tuple[float | None, float | None]]:
    """The thresholds on the timed `metric` the latency measurement must settle (it measures more rounds while one is straddled)."""
    return [(g.min, g.max) for g in gates if g.metric == metric and (g.min is not None or g.max is not None)]
