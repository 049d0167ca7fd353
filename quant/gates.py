"""Gates: thresholds on metrics. Judging never writes files."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from quant.compare import KIND_METRICS
from quant.recipe.schema import Gate, OutputSpec

VARIANT_METRICS = ("size_ratio", "latency_ratio")


@dataclass(frozen=True)
class GateResult:
    metric: str
    output: str | None  # the output the observed value came from (the worst one when the gate named none)
    min: float | None
    max: float | None
    observed: float | None
    passed: bool
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        if isinstance(self.observed, float) and not math.isfinite(self.observed):
            data["observed"] = str(self.observed)
        return data

    def describe(self) -> str:
        bound = f">= {self.min:g}" if self.min is not None else ""
        bound += (" and " if bound and self.max is not None else "") + (f"<= {self.max:g}" if self.max is not None else "")
        where = f"[{self.output}]" if self.output else ""
        observed = "n/a" if self.observed is None else f"{self.observed:.6g}"
        return f"{self.metric}{where} = {observed} (needs {bound})" + (f": {self.reason}" if self.reason else "")


def effective_gates(recipe_gates: list[Gate], variant_gates: list[Gate]) -> list[Gate]:
    """A variant's gate replaces the recipe-wide gate with the same metric and output."""
    overridden = {g.key for g in variant_gates}
    return [g for g in recipe_gates if g.key not in overridden] + list(variant_gates)


def applicable_outputs(gate: Gate, output_specs: dict[str, OutputSpec], output_names: list[str]) -> list[str]:
    """The outputs a gate reads; empty when none can produce its metric."""
    if gate.metric in VARIANT_METRICS:
        return []
    names = [gate.output] if gate.output else output_names
    return [n for n in names if gate.metric in KIND_METRICS[output_specs.get(n, OutputSpec()).kind]]


def _holds(gate: Gate, value: float) -> bool:
    if math.isnan(value):
        return False
    return (gate.min is None or value >= gate.min) and (gate.max is None or value <= gate.max)


def judge(gate: Gate, output_metrics: dict[str, dict[str, float]], variant_metrics: dict[str, float], output_specs: dict[str, OutputSpec]) -> GateResult:
    """Evaluate one gate; over several outputs the worst value decides."""
    bounds = {"metric": gate.metric, "min": gate.min, "max": gate.max}
    if gate.metric in VARIANT_METRICS:
        value = variant_metrics.get(gate.metric)
        if value is None:
            return GateResult(output=None, observed=None, passed=False, reason="not measured", **bounds)
        return GateResult(output=None, observed=value, passed=_holds(gate, value), **bounds)
    candidates = [
        (name, metrics[gate.metric])
        for name in applicable_outputs(gate, output_specs, list(output_metrics))
        if gate.metric in (metrics := output_metrics.get(name, {}))
    ]
    if not candidates:
        return GateResult(output=gate.output, observed=None, passed=False, reason="metric not available (no labels or no applicable output)", **bounds)
    # The worst value: lowest for a lower bound, highest for an upper bound.
    if gate.min is not None:
        name, value = min(candidates, key=lambda c: (not math.isnan(c[1]), c[1]))
    else:
        name, value = max(candidates, key=lambda c: (math.isnan(c[1]), c[1]))
    return GateResult(output=name, observed=value, passed=_holds(gate, value), **bounds)


def judge_all(gates: list[Gate], output_metrics: dict[str, dict[str, float]], variant_metrics: dict[str, float], output_specs: dict[str, OutputSpec]) -> list[GateResult]:
    return [judge(g, output_metrics, variant_metrics, output_specs) for g in gates]
