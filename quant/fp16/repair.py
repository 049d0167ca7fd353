"""FP16 repair: keep in FP32 what the pre-flight flags, validate on the tuning samples, search only if that fails.

Every choice here is made on data the gates never judge on: the scan reads calibration samples; each attempt
is validated against the variant's accuracy gates on the recipe's tuning split (or, without one, on the
scanned calibration samples), and so is the search. The evaluation samples only judge the final model,
through the same `judge_variant` as every other variant, so the verdict is on data the repair never saw.

The search adds the scan's ranked candidates (lowest headroom first) to the flagged set, 1, 2, 4, ... up to
`max_nodes`, then bisects between the last failing and the first passing count, within `budget_seconds`.
When no overflow candidate passes, the loss is the rounding itself: with `rank_by_rounding` a second search runs
over the nodes ranked by weight-rounding sensitivity (quant/fp16/rounding.py, measured on the validation samples),
limited to what the variant's size gate can still afford: all of those first, then bisecting down to the fewest; its attempts must clear the accuracy
gates with their whole 95 % interval on the validation samples (many near-equal sets are tried at the metric's noise
level, so a set that passes by its value alone tends to fall back below the bound on held-out data).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.data.sources import SampleSource, inputs_signature
from quant.errors import BuildError
from quant.evaluate import Reference, evaluate_variant, run_reference
from quant.executor import build_isolated, current
from quant.fp16.preflight import run_preflight
from quant.fp16.rounding import CAST_ALLOWANCE, RoundingRanking, rounding_ranking
from quant.fp16.scan import Preflight
from quant.gates import effective_gates, judge_all
from quant.lockfile import write_lock_options
from quant.methods.base import BuildContext
from quant.metrics.catalogue import HEADLINE_METRICS, VARIANT_METRICS
from quant.model import model_size
from quant.outcome import VariantOutcome
from quant.recipe.schema import INTERVAL_GATE_METRICS, Fp16Options, Gate
from quant.search import _attempt_record

if TYPE_CHECKING:
    from quant.checks import RunInputs
    from quant.runner import RunOptions
    from quant.splits import Split


def tuning_gates(recipe_gates: list[Gate], variant_gates: list[Gate]) -> list[Gate]:
    """The variant's accuracy gates as bounds alone: size and speed are not what keeping nodes in FP32 can fix, and
    a regression against the last release compares numbers measured on the evaluation samples."""
    gates = [g for g in effective_gates(recipe_gates, variant_gates) if g.metric not in VARIANT_METRICS and (g.min is not None or g.max is not None)]
    return [g.model_copy(update={"max_regression": None}) for g in gates]


def interval_gates(gates: list[Gate]) -> list[Gate]:
    """The same bounds, each to be cleared by its whole 95 % interval where the metric has one."""
    return [g.model_copy(update={"must_clear": "interval"}) if g.metric in INTERVAL_GATE_METRICS else g for g in gates]


def _validate(
    name: str, candidate: Path, prepared: RunInputs, tuning: SampleSource, reference: Reference, trial: VariantOutcome, strict: bool = False
) -> None:
    """Compare a candidate with FP32 on the tuning samples and apply the accuracy gates (fills `trial`); `strict`: the
    gates' intervals must clear them, not only their values."""
    recipe = prepared.recipe
    charsets = {n: c.characters for n, c in prepared.charsets.items()}
    threads = current().inference_threads(recipe.bench.threads)
    unit = (evaluate_variant, candidate, reference, tuning, prepared.model.inputs, recipe.outputs, charsets, threads)
    comparisons, _ = current().call(*unit, fresh=False)
    trial.metrics = {out: c.summary() for out, c in comparisons.items()}
    trial.model_path = candidate
    trial.size_bytes = model_size(candidate)
    trial.size_ratio = trial.size_bytes / prepared.model.size_bytes
    gates = tuning_gates(recipe.gates, recipe.variants[name].gates)
    intervals = {out: {m: e.interval for m, e in c.estimates().items()} for out, c in comparisons.items()} if strict else None
    trial.gates = judge_all(interval_gates(gates) if strict else gates, trial.metrics, {}, recipe.outputs, None, intervals)
    trial.status = "passed" if all(g.passed for g in trial.gates) else "failed"


@dataclass(frozen=True)
class _Validation:
    name: str  # "tuning" or "calibration": recorded with every attempt
    source: SampleSource
    reference: Reference


def _validation_split(prepared: RunInputs, tuning: Split | None, scanned: SampleSource, options: RunOptions) -> _Validation:
    """The recipe's tuning split (its FP32 outputs already computed), else the scanned calibration samples."""
    if tuning is not None and tuning.name == "tuning":  # never the evaluation set, even when a search may tune on it
        return _Validation("tuning", tuning.source, tuning.reference)
    recipe, model = prepared.recipe, prepared.model
    signature = inputs_signature(recipe.inputs)
    executor = current()
    with executor.slot():  # work done in this process, counted as one unit
        threads = executor.inference_threads(recipe.bench.threads)
        reference = run_reference(model.path, model.sha256, scanned, model.inputs, signature, options.cache_dir, threads, state=recipe.state)
    return _Validation("calibration", scanned, reference)


def _reasons(preflight: Preflight, kept: list[str], flagged: list[str], ranking: RoundingRanking | None = None) -> dict[str, str]:
    """Why each node kept in FP32 is kept: its worst finding, or the search."""
    reasons: dict[str, str] = {}
    total = sum(c.output_change for c in ranking.costs) if ranking else 0.0
    for rank, cost in enumerate(ranking.costs if ranking else []):
        if cost.node in kept:
            share = f"{cost.output_change / total:.1%} of the summed output change" if total else "no measured change"
            reasons[cost.node] = f"search: weight rounding, rank {rank + 1} per value kept ({share}, {cost.values} value(s))"
    for finding in preflight.findings:
        for node in finding.nodes:
            if node in kept and node not in reasons and (node not in flagged or finding.flagged):
                headroom = f", headroom {finding.headroom:.3g}" if finding.headroom != float("inf") else ""
                source = "scan" if node in flagged else "search"
                reasons[node] = f"{source}: {finding.kind} at {finding.op_type} {finding.tensor} ({finding.why}{headroom})"
    return {node: reasons.get(node, "keep_fp32 in the recipe") for node in kept}


def repair_fp16(
    name: str,
    prepared: RunInputs,
    evaluation: Split,
    tuning: Split | None,
    options: RunOptions,
    outcome: VariantOutcome,
    build_context: Callable[[RunInputs, RunOptions, str], BuildContext],
    judge_variant: Callable[..., VariantOutcome],
) -> VariantOutcome:
    """Scan, then (repair: auto) keep the flagged nodes in FP32, validate, search if needed; judge the result as usual.

    The scan reads the first `preflight.samples` calibration samples. Attempts are validated on the recipe's
    tuning split when it has one, else on those calibration samples; never on the evaluation split.
    The runner hands over how it makes a build context and judges a model (no import back into the runner)."""
    variant = prepared.recipe.variants[name]
    assert isinstance(variant, Fp16Options) and prepared.calibration is not None
    settings = variant.preflight
    scanned = prepared.calibration.subset(settings.samples)
    context = build_context(prepared, options, name)
    preflight, source = run_preflight(variant, context, scanned)
    flagged = preflight.flagged_nodes
    cost = "cached" if preflight.cache_hit else f"{preflight.seconds:.1f} s"
    found = f"{len(preflight.findings)} finding(s), {len(flagged)} node(s) flagged"
    options.log(f"{name}: pre-flight on {preflight.samples} calibration samples ({cost}): {found}")

    started = time.perf_counter()
    attempts: list[dict[str, Any]] = []
    judged: list[tuple[VariantOutcome, list[str]]] = []
    work = options.out_dir / "work" / name

    def attempt(extra: list[str], strict: bool = False) -> VariantOutcome:
        trial = VariantOutcome(name=name, method=outcome.method, options=outcome.options)
        try:
            kept = variant.model_copy(update={"keep_fp32": list(dict.fromkeys([*variant.keep_fp32, *extra]))})  # typed options, not extra arguments
            result = build_isolated(kept, context, work / f"repair-{len(attempts):02d}.onnx")
            trial.build = result.details
            _validate(name, result.path, prepared, validation.source, validation.reference, trial, strict)
        except BuildError as error:
            trial.status, trial.error = "error", str(error)
        stage = "weight_rounding" if strict else ("scan" if not attempts else "overflow")  # which ranking the node set came from
        record = {
            **_attempt_record(trial, extra, stage, {"keep_fp32": len(extra)}, 0),
            "kept_fp32": extra,
            "split": validation.name,
            "gates_cleared_by": "interval" if strict else "value",
        }
        attempts.append(record)
        judged.append((trial, extra))
        options.log(f"{name}: {len(extra)} node(s) kept in FP32 -> {trial.status} on the {validation.name} samples{' (intervals)' if strict else ''}")
        return trial

    conclusion = "scan only (repair: scan): nothing kept in FP32 beyond keep_fp32"
    ranking: RoundingRanking | None = None
    extra: list[str] = []
    if variant.repair == "auto":
        validation = _validation_split(prepared, tuning, scanned, options)
        first = attempt(flagged)
        conclusion = f"passed on the {validation.name} samples with the scan's {len(flagged)} node(s) in FP32"
        deadline = started + settings.budget_seconds
        if not first.passed:
            conclusion = _search(attempt, first, flagged, preflight.ranked_candidates(), settings.max_nodes, deadline)
        if not any(o.passed for o, _ in judged) and first.status != "error" and settings.rank_by_rounding and time.perf_counter() < deadline:
            ranking = _rounding_ranking(variant, context, source, validation, flagged, options)
            affordable = _affordable(ranking, flagged, first, _size_limit(prepared.recipe.gates, variant.gates), prepared.model.size_bytes)
            options.log(f"{name}: weight-rounding ranking of {len(ranking.costs)} node(s) ({_cost(ranking)}); {len(affordable)} within the size gate")
            # Many near-equal node sets are tried at the noise level of the metric: the chosen one must clear the gates
            # with its whole interval on the tuning samples, or its held-out value would often fall back below the bound.
            rounded = _search_down(lambda keep: attempt(keep, strict=True), flagged, affordable[: settings.max_rounding_nodes], deadline)
            conclusion = f"overflow candidates: {conclusion}; weight-rounding candidates: {rounded}"
        chosen, extra = next(((o, e) for o, e in sorted(judged, key=lambda item: len(item[1])) if o.passed), None) or min(
            judged, key=lambda item: (len(item[0].failed_gates) if item[0].status != "error" else 99, len(item[1]))
        )
        built = chosen.model_path
        details = chosen.build
    else:
        result = build_isolated(variant, context, work / "scanned.onnx")
        built, details = result.path, result.details
    if built is None:
        outcome.status, outcome.error = "error", next((o.error for o, _ in judged if o.error), "no attempt could be built")
        return outcome
    final = options.out_dir / "variants" / f"{name}.onnx"
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, final)
    outcome.build = {**details, "fp16_preflight": {**preflight.to_dict(), "split": "calibration", "source_model": str(source)}}
    outcome.build["kept_fp32_reasons"] = _reasons(preflight, [*variant.keep_fp32, *extra], flagged, ranking)
    if ranking is not None:
        outcome.build["fp16_rounding"] = {**ranking.to_dict(), "split": validation.name}
    judge_variant(name, final, prepared, evaluation, outcome, options.log, options.detail)
    if variant.repair == "auto":
        outcome.search = {
            "kind": "fp16_repair",
            "attempts": attempts,
            "metrics": [m for m in HEADLINE_METRICS if any(m in a for a in attempts)],
            "chosen_nodes_in_float": len(extra),
            "split": f"{validation.name} ({len(validation.source)} samples): every attempt; evaluation: the final verdict only",
            "seconds": round(time.perf_counter() - started, 3),
            "conclusion": conclusion,
        }
        lock = write_lock_options(prepared.loaded, options.out_dir, name, {"keep_fp32": [*variant.keep_fp32, *extra], "repair": "scan"})
        outcome.search["lock_file"] = str(lock)
    return outcome


def _search(
    attempt: Callable[[list[str]], VariantOutcome], first: VariantOutcome, flagged: list[str], ranked: list[str], max_nodes: int, deadline: float
) -> str:
    """More FP32 nodes from the ranking, doubling then bisecting; returns the conclusion."""
    if first.status == "error":
        return f"the first repair could not be built: {first.error}"
    candidates = [n for n in ranked if n not in flagged][:max_nodes]
    if not candidates:
        return f"failed validation with the scan's {len(flagged)} node(s) in FP32, and the scan ranks no other node"
    last = [0.0]  # the last attempt's duration: one is not started when it would end past the deadline

    def affordable() -> bool:
        return time.perf_counter() + last[0] < deadline

    def passes(count: int) -> bool:
        started = time.perf_counter()
        passed = attempt([*flagged, *candidates[:count]]).passed
        last[0] = time.perf_counter() - started
        return passed

    failing, passing, k = 0, None, 1
    while affordable():
        k = min(k, len(candidates))
        if passes(k):
            passing = k
            break
        failing = k
        if k == len(candidates):
            break
        k *= 2
    while passing is not None and passing - failing > 1 and affordable():
        middle = (failing + passing) // 2
        if passes(middle):
            passing = middle
        else:
            failing = middle
    if passing is None:
        timed_out = not affordable()
        return f"no attempt passed validation {'within the time budget' if timed_out else f'with up to {len(candidates)} more node(s)'}"
    return f"passed validation with the scan's {len(flagged)} node(s) and {passing} more from its ranking in FP32"


def _rounding_ranking(
    variant: Fp16Options, context: BuildContext, source: Path, validation: _Validation, flagged: list[str], options: RunOptions
) -> RoundingRanking:
    """Nodes ranked by weight-rounding sensitivity on the first `rounding_samples` validation samples (never evaluation)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST  # what the conversion keeps in FP32 anyway

    blocked = variant.op_block_list if variant.op_block_list is not None else sorted(DEFAULT_OP_BLOCK_LIST)
    samples = validation.source.subset(variant.preflight.rounding_samples)
    return rounding_ranking(source, samples, context.model_inputs, [*variant.keep_fp32, *flagged], blocked, options.cache_dir)


def _cost(ranking: RoundingRanking) -> str:
    return "cached" if ranking.cache_hit else f"{ranking.samples} samples, {ranking.seconds:.1f} s"


def _size_limit(recipe_gates: list[Gate], variant_gates: list[Gate]) -> float | None:
    return next((g.max for g in effective_gates(recipe_gates, variant_gates) if g.metric == "size_ratio" and g.max is not None), None)


def _affordable(ranking: RoundingRanking, flagged: list[str], first: VariantOutcome, size_limit: float | None, fp32_bytes: int) -> list[str]:
    """The ranking's nodes, in order, while keeping them all in FP32 still fits the size gate: each kept value adds
    2 bytes to the first attempt's size (4 instead of 2), plus its cast allowance."""
    if size_limit is None or first.size_ratio is None:
        return [n for n in ranking.nodes() if n not in flagged]
    room = (size_limit - first.size_ratio) * fp32_bytes
    chosen: list[str] = []
    for cost in ranking.costs:
        if cost.node in flagged or cost.output_change <= 0:
            continue
        room -= 2 * (cost.values + CAST_ALLOWANCE)
        if room < 0:
            break
        chosen.append(cost.node)
    return chosen


def _search_down(attempt: Callable[[list[str]], VariantOutcome], flagged: list[str], candidates: list[str], deadline: float) -> str:
    """Every affordable candidate first (the most the size gate allows); only if that passes, bisect down to the fewest
    that still pass. One attempt decides when even all of them fail, and no attempt is spent on sets far too small."""
    if not candidates:
        return "the size gate affords no node"
    if time.perf_counter() >= deadline:
        return "no attempt within the time budget"
    started = time.perf_counter()
    if not attempt([*flagged, *candidates]).passed:
        return f"failed validation with all {len(candidates)} node(s) the size gate affords in FP32"
    last = time.perf_counter() - started
    failing, passing = 0, len(candidates)
    while passing - failing > 1 and time.perf_counter() + last < deadline:
        middle = (failing + passing) // 2
        if attempt([*flagged, *candidates[:middle]]).passed:
            passing = middle
        else:
            failing = middle
    return f"passed validation with the scan's {len(flagged)} node(s) and the first {passing} by weight rounding in FP32"
