"""Judging one built model file on a split: is it changed at all, how close to FP32, how big and fast, and its gates."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from quant.bench import latency_ratio
from quant.checks import RunInputs
from quant.compare import by_slice_then_output
from quant.data.feeds import checked_feeds
from quant.evaluate import evaluate_variant
from quant.executor import current
from quant.gates import effective_gates, judge_all, latency_bounds, overall_verdict
from quant.model import file_sha256, model_size
from quant.outcome import VariantOutcome
from quant.precision import nothing_quantized
from quant.splits import Split
from quant.stages import timed

Log = Callable[[str], None]


def judge_variant(
    name: str,
    candidate: Path,
    inputs: RunInputs,
    split: Split,
    outcome: VariantOutcome,
    log: Log,
    detail: Log = lambda message: None,
) -> VariantOutcome:
    """Compare, measure and gate one built model file on `split` (the gates' evaluation set, or a search's tuning set)."""
    recipe = inputs.recipe
    variant = recipe.variants[name]
    unchanged = nothing_quantized(variant.method, inputs.model.path, candidate, getattr(variant, "op_types", None))
    if unchanged is not None:  # an FP32 copy: nothing to judge, never promoted
        outcome.status, outcome.note, outcome.model_path = "nothing_quantized", unchanged, candidate
        outcome.size_bytes = model_size(candidate)
        outcome.size_ratio = outcome.size_bytes / inputs.model.size_bytes
        log(f"{name}: NOTHING QUANTIZED: {unchanged}")
        return outcome
    executor = current()
    with timed("evaluation", name, split.name):
        comparisons, _ = executor.call(  # a unit: runs beside other variants' builds and evaluations
            evaluate_variant,
            candidate,
            split.reference,
            split.source,
            inputs.model.inputs,
            recipe.outputs,
            {n: c.characters for n, c in inputs.charsets.items()},
            executor.inference_threads(recipe.bench.threads),  # its share of the cores under --jobs: the same outputs
            fresh=False,
        )
    outcome.judged_on = split.name
    outcome.metrics = {out: c.summary() for out, c in comparisons.items()}
    outcome.estimates = {out: c.estimates() for out, c in comparisons.items()}
    outcome.slices = by_slice_then_output(comparisons)
    outcome.distributions = {out: c.distributions() for out, c in comparisons.items()}
    outcome.mismatches = {out: c.mismatches for out, c in comparisons.items() if c.mismatches}
    outcome.model_path = candidate
    outcome.model_sha256 = file_sha256(candidate)
    outcome.size_bytes = model_size(candidate)
    outcome.size_ratio = outcome.size_bytes / inputs.model.size_bytes
    feeds = [f for _, f in zip(range(recipe.bench.samples), (f for _, f in checked_feeds(split.source, inputs.model.inputs)))]
    gates = effective_gates(recipe.gates, recipe.variants[name].gates)
    bench = recipe.bench
    benchmark = partial(
        latency_ratio, rounds=bench.rounds, warmup=bench.warmup, threads=bench.threads,
        bounds=latency_bounds(gates), max_rounds=bench.max_rounds or 4 * bench.rounds, max_seconds=bench.max_seconds,
    )  # fmt: skip
    with timed("latency", name, split.name):
        outcome.latency = executor.alone(benchmark, inputs.model.path, candidate, feeds)  # with nothing else running: a ratio under load is worthless
    variant_metrics = {"size_ratio": outcome.size_ratio, "latency_ratio": outcome.latency.ratio}
    intervals = {out: {m: e.interval for m, e in estimates.items()} for out, estimates in outcome.estimates.items()}
    intervals[""] = {"latency_ratio": outcome.latency.interval} if outcome.latency.interval else {}
    earlier = inputs.previous.metrics_of(name) if inputs.previous else None
    outcome.gates = judge_all(gates, outcome.metrics, variant_metrics, recipe.outputs, earlier, intervals)
    outcome.status = overall_verdict(outcome.gates)
    for gate in outcome.gates:
        detail(f"{name}:   {({'passed': 'pass', 'failed': 'FAIL'}).get(gate.verdict, gate.verdict.upper())} {gate.describe()}")
    log(f"{name}: {outcome.status.upper()} (size x{outcome.size_ratio:.2f}, latency x{outcome.latency.ratio:.2f})")
    return outcome
