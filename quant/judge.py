"""Judging one built model file on a split: is it changed at all, how close to FP32, how big and fast, and its gates."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

from quant.bench import LatencyResult, latency_ratio
from quant.checks import RunInputs
from quant.compare import by_slice_then_output
from quant.data.feeds import checked_feeds
from quant.evaluate import evaluate_variant
from quant.executor import current
from quant.gates import effective_gates, judge_all, latency_bounds, overall_verdict
from quant.metrics.catalogue import TIMED_METRICS
from quant.model import file_sha256, model_size
from quant.outcome import VariantOutcome
from quant.precision import nothing_quantized
from quant.recipe.schema import Gate
from quant.splits import Split
from quant.stages import timed

Log = Callable[[str], None]
# When the latency benchmark runs: always (a variant's verdict: the release manager sees every variant's speed), or only
# once the untimed gates hold (a search attempt: speed cannot rescue an attempt that failed accuracy or size, and a
# benchmark must run with nothing beside it, so skipping it is the search's largest saving: quant.search).
LatencyWhen = Literal["always", "if_untimed_pass"]
LATENCY_SKIPPED = "not measured: an accuracy or size gate already failed, so speed could not change the verdict"


def judge_variant(
    name: str,
    candidate: Path,
    inputs: RunInputs,
    split: Split,
    outcome: VariantOutcome,
    log: Log,
    detail: Log = lambda message: None,
    latency_when: LatencyWhen = "always",
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
    gates = effective_gates(recipe.gates, recipe.variants[name].gates)
    intervals = {out: {m: e.interval for m, e in estimates.items()} for out, estimates in outcome.estimates.items()}
    earlier = inputs.previous.metrics_of(name) if inputs.previous else None
    untimed = [g for g in gates if g.metric not in TIMED_METRICS]
    untimed_results = judge_all(untimed, outcome.metrics, {"size_ratio": outcome.size_ratio}, recipe.outputs, earlier, intervals)
    if latency_when == "if_untimed_pass" and overall_verdict(untimed_results) == "failed":
        outcome.gates, outcome.latency_note = untimed_results, LATENCY_SKIPPED
    else:
        outcome.latency = _measure_latency(inputs, candidate, split, gates, name)
        intervals[""] = {"latency_ratio": outcome.latency.interval} if outcome.latency.interval else {}
        variant_metrics = {"size_ratio": outcome.size_ratio, "latency_ratio": outcome.latency.ratio}
        outcome.gates = judge_all(gates, outcome.metrics, variant_metrics, recipe.outputs, earlier, intervals)
    outcome.status = overall_verdict(outcome.gates)
    for gate in outcome.gates:
        detail(f"{name}:   {({'passed': 'pass', 'failed': 'FAIL'}).get(gate.verdict, gate.verdict.upper())} {gate.describe()}")
    speed = f"latency x{outcome.latency.ratio:.2f}" if outcome.latency else "latency not measured"
    log(f"{name}: {outcome.status.upper()} (size x{outcome.size_ratio:.2f}, {speed})")
    return outcome


def _measure_latency(inputs: RunInputs, candidate: Path, split: Split, gates: list[Gate], name: str) -> LatencyResult:
    """The paired latency ratio to FP32 on the split's first `bench.samples` samples, with nothing else running."""
    bench = inputs.recipe.bench
    feeds = [f for _, f in zip(range(bench.samples), (f for _, f in checked_feeds(split.source, inputs.model.inputs)))]
    benchmark = partial(
        latency_ratio, rounds=bench.rounds, warmup=bench.warmup, threads=bench.threads,
        bounds=latency_bounds(gates), max_rounds=bench.max_rounds or 4 * bench.rounds, max_seconds=bench.max_seconds,
    )  # fmt: skip
    with timed("latency", name, split.name):
        return current().alone(benchmark, inputs.model.path, candidate, feeds)  # with nothing else running: a ratio under load is worthless
