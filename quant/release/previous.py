"""Comparison with the last release of the same recipe: what got better or worse, by variant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quant.metrics.catalogue import HEADLINE_METRICS, VARIANT_METRICS, worst_over_outputs

# The headline metrics and the variant-wide ones: what a reader compares between two releases.
COMPARED = (*HEADLINE_METRICS, *VARIANT_METRICS)


@dataclass(frozen=True)
class PreviousRelease:
    version: str
    manifest: dict[str, Any]

    def metrics_of(self, variant: str) -> dict[str, dict[str, float]] | None:
        """The variant's metrics by output, with '' holding the variant-wide ones (size, latency)."""
        entry = self.manifest.get("variants", {}).get(variant)
        return None if entry is None else entry.get("metrics")


def metric_table(output_metrics: dict[str, dict[str, float]], variant_metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    return {**output_metrics, "": dict(variant_metrics)}


def changes_since_release(previous: PreviousRelease, current: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Per variant in both: previous value, current value and change of the headline metrics (worst output)."""
    variants: dict[str, dict[str, dict[str, float]]] = {}
    for name, tables in current.items():
        earlier = previous.metrics_of(name)
        if not earlier:
            continue
        rows = {}
        for metric in COMPARED:
            now, then = worst_over_outputs(metric, tables.values()), worst_over_outputs(metric, earlier.values())
            if now is not None and then is not None:
                rows[metric] = {"previous": then, "current": now, "change": now - then}
        variants[name] = rows
    return {"previous_version": previous.version, "variants": variants}
