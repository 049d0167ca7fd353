"""What a run found out about each variant: the typed record reports and promotion read."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from quant.bench import LatencyResult
from quant.gates import GateResult
from quant.metrics.samples import Estimate

# nothing_quantized: the method left the model an FP32 copy; it is neither judged nor promoted.
Status = Literal["passed", "failed", "inconclusive", "error", "nothing_quantized"]


def json_number(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as strings so the file stays standard JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: json_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_number(v) for v in value]
    return value


def _estimates_dict(estimates: dict[str, dict[str, Estimate]]) -> dict[str, dict[str, dict[str, object]]]:
    return {output: {metric: e.to_dict() for metric, e in metrics.items()} for output, metrics in estimates.items()}


@dataclass
class VariantOutcome:
    name: str
    method: str
    options: dict[str, Any]
    status: Status = "error"
    error: str | None = None
    note: str | None = None  # why a variant is `nothing_quantized`: what was asked and the op types the model has
    model_path: Path | None = None
    model_sha256: str | None = None
    size_bytes: int | None = None
    size_ratio: float | None = None
    latency: LatencyResult | None = None
    latency_note: str | None = None  # why `latency` is None when the variant was judged (a search attempt that failed accuracy)
    judged_on: str | None = None  # the split its metrics and gates come from: "evaluation" (or "tuning" for a search's attempts)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    estimates: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # per output: ratio metrics with 95 % interval and n
    slices: dict[str, dict[str, dict[str, Estimate]]] = field(default_factory=dict)  # per slice, per output: the same
    distributions: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    mismatches: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    gates: list[GateResult] = field(default_factory=list)
    build: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] | None = None  # fallback attempts and the sensitivity ranking, when a search ran

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if g.verdict == "failed"]

    @property
    def inconclusive_gates(self) -> list[GateResult]:
        return [g for g in self.gates if g.inconclusive]

    def to_dict(self) -> dict[str, Any]:
        return json_number(
            {
                "name": self.name,
                "method": self.method,
                "options": self.options,
                "status": self.status,
                "error": self.error,
                "note": self.note,
                "model_file": self.model_path.name if self.model_path else None,
                "model_sha256": self.model_sha256,
                "size_bytes": self.size_bytes,
                "size_ratio": self.size_ratio,
                "latency": self.latency.to_dict() if self.latency else None,
                "latency_note": self.latency_note,
                "judged_on": self.judged_on,
                "metrics": self.metrics,
                "intervals": _estimates_dict(self.estimates),
                "slices": {name: _estimates_dict(outputs) for name, outputs in self.slices.items()},
                "gates": [g.to_dict() for g in self.gates],
                "build": self.build,
                "search": self.search,
                "distributions": self.distributions,
                "mismatch_examples": self.mismatches,
            }
        )
