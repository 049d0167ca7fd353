"""Judging one built variant of a family on the held-out split: its greedy text vs FP32's (quant.seq2seq.compare),
its latency per image and per generated token interleaved with FP32 (quant.seq2seq.latency), the size of the
whole family, and the gates."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from quant.bench import LatencyResult
from quant.executor import current
from quant.gates import effective_gates, judge_all, overall_verdict
from quant.intervals import Interval
from quant.metrics.samples import Estimate
from quant.outcome import VariantOutcome
from quant.recipe.schema import Gate
from quant.seq2seq.checks import FamilyInputs
from quant.seq2seq.compare import GenerationComparison, compare_generation
from quant.seq2seq.family import open_sessions
from quant.seq2seq.generate import Family, Feeds, Generation
from quant.seq2seq.latency import FamilyLatency, family_latency_of

Log = Callable[[str], None]
TEXT = ""  # a family's metrics are variant-wide: they sit under the '' output, as size and latency do


@dataclass(frozen=True)
class Reference:
    """FP32's side, computed once per run: its sessions, the held-out images and its generations on them."""

    sessions: Family
    feeds: list[Feeds]
    ids: list[str]
    labels: list[str | None]
    generations: list[Generation]
    seconds: float  # FP32's generation of them all


def _bounds(gates: list[Gate], metric: str) -> list[tuple[float | None, float | None]]:
    return [(g.min, g.max) for g in gates if g.metric == metric and (g.min is not None or g.max is not None)]


def as_latency_result(latency: FamilyLatency, threads: int) -> LatencyResult:
    """The per-token figures in the single-model shape, so the summary, the policy's ranking and the report read them."""
    return LatencyResult(
        reference_ms=latency.reference_ms_per_token,
        variant_ms=latency.variant_ms_per_token,
        ratio=latency.token_ratio,
        rounds=latency.rounds,
        samples=latency.images,
        threads=threads,
        spread=math.nan,  # not kept by the family measurement; its interval says how noisy it was
        interval=latency.token_interval,
        decided=latency.decided,
        load=latency.load,
    )


def judge_family(name: str, paths: dict[str, Path], inputs: FamilyInputs, reference: Reference, outcome: VariantOutcome, log: Log) -> VariantOutcome:
    """Compare, time and gate one variant family (its parts at `paths`, by role) against FP32."""
    recipe, family = inputs.recipe, inputs.family
    threads = recipe.bench.threads
    variant = open_sessions(paths, threads)
    comparison: GenerationComparison = compare_generation(
        reference.generations, variant, reference.feeds, family.generation, family.vocabulary, labels=reference.labels, ids=reference.ids
    )
    gates = effective_gates(recipe.gates, recipe.variants[name].gates)
    bench = recipe.bench
    timed = reference.feeds[: bench.samples]
    benchmark = partial(
        family_latency_of, rounds=bench.rounds, warmup=max(bench.warmup, 1),
        image_bounds=_bounds(gates, "image_latency_ratio"),
        token_bounds=[*_bounds(gates, "token_latency_ratio"), *_bounds(gates, "latency_ratio")],
        max_rounds=bench.max_rounds or 4 * bench.rounds, max_seconds=bench.max_seconds,
    )  # fmt: skip
    fp32_paths = {role: info.path for role, info in family.parts.items()}
    # With nothing else running (--jobs: beside another recipe's units, a ratio is worthless; Ray: on the bench node).
    latency = current().alone(benchmark, fp32_paths, paths, threads, timed, family.generation)
    outcome.size_bytes = sum(p.stat().st_size for p in paths.values())
    outcome.size_ratio = outcome.size_bytes / family.size_bytes
    outcome.latency = as_latency_result(latency, threads)
    estimates: dict[str, Estimate] = comparison.estimates()
    metrics = {**comparison.metrics(), **latency.metrics(), "latency_ratio": latency.token_ratio, "size_ratio": outcome.size_ratio}
    intervals: dict[str, Interval] = {**comparison.intervals(), **latency.intervals(), "latency_ratio": latency.token_interval}
    outcome.judged_on = "evaluation"
    outcome.metrics = {TEXT: metrics}
    outcome.estimates = {TEXT: estimates}
    outcome.mismatches = {"text": [line.to_dict() for line in comparison.mismatches()]}
    outcome.build["family_latency"] = latency.to_dict()
    outcome.build["first_divergence"] = comparison.divergence_summary()
    earlier = inputs.previous.metrics_of(name) if inputs.previous else None
    outcome.gates = judge_all(gates, {}, metrics, {}, earlier, {TEXT: intervals})
    outcome.status = overall_verdict(outcome.gates)
    log(
        f"{name}: {outcome.status.upper()} (size x{outcome.size_ratio:.2f}, per token x{latency.token_ratio:.2f}, "
        f"same text {metrics.get('seq_exact_match', math.nan):.3f})"
    )
    return outcome
