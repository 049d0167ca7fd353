"""Gates: thresholds on metrics, and limits on regression against the last release. Judging never writes files."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from quant.metrics.catalogue import VARIANT_METRICS, badness, kind_metrics
from quant.recipe.schema import Gate, OutputSpec


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

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        if isinstance(self.observed, float) and not math.isfinite(self.observed):
            data["observed"] = str(self.observed)
        return data

    def describe(self) -> str:
        bounds = [f">= {self.min:g}" if self.min is not None else "", f"<= {self.max:g}" if self.max is not None else ""]
        if self.max_regression is not None:
            bounds.append(
                f"at most {self.max_regression:g} worse than the last release ({'n/a' if self.previous is None else f'{self.previous:.6g}'})"
            )
        where = f"[{self.output}]" if self.output else ""
        observed = "n/a" if self.observed is None else f"{self.observed:.6g}"
        return f"{self.metric}{where} = {observed} (needs {' and '.join(b for b in bounds if b)})" + (f": {self.reason}" if self.reason else "")


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


def judge(
    gate: Gate,
    output_metrics: dict[str, dict[str, float]],
    variant_metrics: dict[str, float],
    output_specs: dict[str, OutputSpec],
    previous: dict[str, dict[str, float]] | None = None,
) -> GateResult:
    """Evaluate one gate. `previous` holds the last release's metrics of this variant (by output, plus '' for variant-wide ones)."""
    base = {"metric": gate.metric, "min": gate.min, "max": gate.max, "max_regression": gate.max_regression}
    found = _observed(gate, output_metrics, variant_metrics, output_specs)
    if found is None:
        return GateResult(
            output=gate.output, observed=None, passed=False, reason="metric not available (no labels, not measured, or no applicable output)", **base
        )
    output, value = found
    passed = not math.isnan(value) and (gate.min is None or value >= gate.min) and (gate.max is None or value <= gate.max)
    reason, earlier = "", None
    if gate.max_regression is not None:
        earlier = (previous or {}).get(output or "", {}).get(gate.metric)
        if earlier is None:
            reason = "no earlier release of this variant to compare with"
        elif regression(gate.metric, earlier, value) > gate.max_regression:
            passed = False
            reason = f"regressed from {earlier:.6g} in the last release"
    return GateResult(output=output, observed=value, passed=passed, reason=reason, previous=earlier, **base)


def judge_all(
    gates: list[Gate],
    output_metrics: dict[str, dict[str, float]],
    variant_metrics: dict[str, float],
    output_specs: dict[str, OutputSpec],
    previous: dict[str, dict[str, float]] | None = None,
) -> list[GateResult]:
    return [judge(g, output_metrics, variant_metrics, output_specs, previous) for g in gates]
