"""Release policy: which of a run's variants are promoted, their ranking, and the run's verdict and exit code."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from quant.outcome import VariantOutcome
from quant.recipe.schema import Promotion

EXIT_PASS, EXIT_GATE_FAILED = 0, 1
EXIT_INCONCLUSIVE = 4  # only undecided (inconclusive) variants kept the policy from being met


def worst_exit_code(codes: Iterable[int]) -> int:
    """Across several recipes the worst outcome wins: a failed gate over an undecided one over a pass."""
    severity = {EXIT_PASS: 0, EXIT_INCONCLUSIVE: 1, EXIT_GATE_FAILED: 2}
    return max(codes, key=severity.__getitem__, default=EXIT_PASS)


def rank_key(promotion: Promotion) -> Callable[[VariantOutcome], float]:
    """Lower is better: the variant's `rank_by` figure (a variant without one ranks last)."""
    if promotion.rank_by == "latency_ratio":
        return lambda o: o.latency.ratio if o.latency else float("inf")
    return lambda o: o.size_ratio or float("inf")


def select_for_release(
    promotion: Promotion, outcomes: list[VariantOutcome], passes: Callable[[VariantOutcome], bool] = lambda o: o.passed
) -> tuple[list[VariantOutcome], bool]:
    """(variants to promote, whether the promotion policy was met)."""
    passing = [o for o in outcomes if passes(o)]
    if promotion.policy == "all_or_nothing":
        met = len(passing) == len(outcomes)
        return (passing if met else []), met
    if promotion.policy == "best":
        if not passing:
            return [], False
        return [min(passing, key=rank_key(promotion))], True
    return passing, bool(passing)


def ranked(promotion: Promotion, outcomes: list[VariantOutcome]) -> list[str]:
    """Variant names, best first (the MLflow alias goes to the first of each registered model)."""
    return [o.name for o in sorted(outcomes, key=rank_key(promotion))]


def run_verdict(promotion: Promotion, outcomes: list[VariantOutcome], promoted: list[VariantOutcome], policy_met: bool) -> tuple[int, str]:
    """(exit code, one line): 0 policy met; 4 only undecided variants kept it from being met; 1 otherwise."""
    marked = ("nothing_quantized", "inconclusive")
    failing = [o.name + (f" ({o.status.replace('_', ' ')})" if o.status in marked else "") for o in outcomes if not o.passed]
    if policy_met:
        return EXIT_PASS, f"PASS: promoted {', '.join(o.name for o in promoted)}" + (f"; did not pass: {', '.join(failing)}" if failing else "")
    # Undecided, not failed: the policy would have been met had the inconclusive variants passed.
    if select_for_release(promotion, outcomes, lambda o: o.passed or o.status == "inconclusive")[1]:
        return EXIT_INCONCLUSIVE, (
            f"INCONCLUSIVE: promotion policy '{promotion.policy}' not met because a latency interval still straddled its "
            f"threshold after the extra rounds (rerun on a quieter machine or raise bench.max_rounds); did not pass: {', '.join(failing)}"
        )
    return EXIT_GATE_FAILED, f"FAIL: promotion policy '{promotion.policy}' not met; did not pass: {', '.join(failing)}"
