"""Orchestration: check inputs, run FP32 once, build and judge each variant, report, promote."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quant import __version__
from quant.bench import latency_ratio
from quant.calibration.reader import checked_feeds
from quant.calibration.sources import SampleSource, check_disjoint, inputs_signature, open_source
from quant.charset import Charset, output_charsets
from quant.compare import by_slice_then_output
from quant.destination import Destination, destination_for
from quant.errors import BuildError, InputError, ModelError, OutputError, RecipeError
from quant.evaluate import compare_variant, run_reference
from quant.executor import build_isolated
from quant.gates import applicable_outputs, effective_gates, judge_all, latency_bounds, overall_verdict
from quant.intervals import unsupported_reason
from quant.lockfile import remove_stale_lock, write_lock
from quant.methods.base import BuildContext, BuildResult
from quant.metrics.catalogue import CATALOGUE, VARIANT_METRICS
from quant.metrics.samples import interval_method
from quant.model import ModelInfo, file_sha256, inspect_model, locate, model_size
from quant.outcome import VariantOutcome, json_number
from quant.precision import nothing_quantized, one_value_per_sample, source_precision
from quant.progress import Progress
from quant.promote import Published, Release
from quant.provenance import environment
from quant.recipe.loader import LoadedRecipe
from quant.recipe.schema import Recipe, StaticInt8Options
from quant.regression import PreviousRelease, compare_with_release, metric_table
from quant.report.summary import summary_markdown
from quant.search import SearchSetup, search_fallback
from quant.splits import TUNED_ON_EVALUATION, Split, SplitName, tuning_source
from quant.validation import all_gates, check_charset_covers_classes, check_gate_needs, check_not_already_fp16, check_subgraph_compute

SCHEMA_VERSION = 1
EXIT_INCONCLUSIVE = 4  # the CLI's exit code when only undecided (inconclusive) variants kept the policy from being met
Log = Callable[[str], None]


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    cache_dir: Path
    only: tuple[str, ...] = ()
    validate_only: bool = False
    version: str | None = None
    log: Log = log_stderr
    detail: Log = lambda message: None  # --verbose: every gate and build figure, not just the verdict
    allow_tuning_on_evaluation: bool = False  # --allow-tuning-on-evaluation: searches may choose on the gate split


@dataclass
class RunResult:
    exit_code: int
    verdict: str
    outcomes: list[VariantOutcome] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    release: str | None = None


@dataclass(frozen=True)
class Prepared:
    """Everything checked before any variant is built."""

    recipe: Recipe
    loaded: LoadedRecipe
    model: ModelInfo
    evaluation: SampleSource
    calibration: SampleSource | None
    variants: tuple[str, ...]
    charsets: dict[str, Charset]  # by output name, for the outputs that declare a character list
    previous: PreviousRelease | None  # the last release of this recipe, for regression gates and the comparison
    destination: Destination
    tuning: SampleSource | None = None  # what searches choose on; the evaluation set itself only when tuned_on_evaluation
    tuned_on_evaluation: bool = False


# --------------------------------------------------------------------------- checks


def _check_recipe_against_model(recipe: Recipe, model: ModelInfo, charsets: dict[str, Charset], file: str) -> None:
    image_based = recipe.evaluation.source.kind != "npz"
    if image_based:
        for name in recipe.inputs:
            if name not in model.inputs:
                raise ModelError(f"the model has no input '{name}'; its inputs are {list(model.inputs)}", file=file, field=f"inputs.{name}")
        for name in model.inputs:
            if name not in recipe.inputs:
                raise ModelError(f"model input '{name}' has no entry in the recipe's 'inputs'", file=file, field="inputs")
    for name, spec in recipe.outputs.items():
        if name not in model.outputs:
            raise ModelError(f"the model has no output '{name}'; its outputs are {list(model.outputs)}", file=file, field=f"outputs.{name}")
        charset = set(charsets[name].characters) if name in charsets else set()
        unknown = [c for c in spec.ignore_chars if c not in charset]
        if unknown:
            raise RecipeError(f"characters {unknown} are not in the model's character list", file=file, field=f"outputs.{name}.ignore_chars")
    for where, index, gate in all_gates(recipe):
        if gate.output and gate.output not in model.outputs:
            outputs = list(model.outputs)
            raise RecipeError(f"the model has no output '{gate.output}'; its outputs are {outputs}", file=file, field=f"{where}[{index}].output")
        if gate.metric not in VARIANT_METRICS and not applicable_outputs(gate, recipe.outputs, list(model.outputs)):
            kinds = sorted(CATALOGUE[gate.metric].kinds)
            raise RecipeError(
                f"metric '{gate.metric}' needs an output of kind {' or '.join(kinds)} (declare it under 'outputs')",
                file=file,
                field=f"{where}[{index}].metric",
            )


def _check_gates_supportable(recipe: Recipe, samples: int, file: str) -> None:
    """A gate that demands a 95 % interval the evaluation set is too small to ever give is a recipe error."""
    for where, index, gate in all_gates(recipe):
        method = interval_method(gate.metric)
        if gate.must_clear != "interval" or method is None:
            continue
        reason = unsupported_reason(method, samples, gate.min, gate.max)
        if reason:
            bound = "min" if gate.min is not None else "max"
            message = f"gate on '{gate.metric}' can never pass: the evaluation set has {samples} samples; {reason}"
            raise RecipeError(message, file=file, field=f"{where}[{index}].{bound}")


def prepare(loaded: LoadedRecipe, options: RunOptions) -> Prepared:
    """Check the recipe, model and data; nothing is built and nothing is written."""
    try:
        return _prepare(loaded, options)
    except InputError as error:
        if error.file is None:  # every bad-input line names a file: the recipe, when nothing closer is known
            raise type(error)(error.detail, file=str(loaded.path), field=error.field) from None
        raise


def _prepare(loaded: LoadedRecipe, options: RunOptions) -> Prepared:
    recipe = loaded.recipe
    file = str(loaded.path)
    unknown = [v for v in options.only if v not in recipe.variants]
    if unknown:
        raise RecipeError(f"--only names unknown variant(s) {unknown}; the recipe has {list(recipe.variants)}", file=file, field="variants")
    model_path = locate(recipe.model, loaded.base_dir)
    model = inspect_model(model_path)
    check_not_already_fp16(recipe, model_path)
    check_subgraph_compute(recipe, model_path)
    charsets = output_charsets({n: s for n, s in recipe.outputs.items() if n in model.outputs}, model.metadata, loaded.base_dir)
    check_charset_covers_classes(recipe, model.outputs, charsets)
    _check_recipe_against_model(recipe, model, charsets, file)
    input_names = list(model.inputs)
    evaluation = open_source(recipe.evaluation, loaded.base_dir, recipe.inputs, input_names, "evaluation")
    check_gate_needs(recipe, list(model.outputs), evaluation)
    _check_gates_supportable(recipe, len(evaluation), file)
    calibration = open_source(recipe.calibration, loaded.base_dir, recipe.inputs, input_names, "calibration") if recipe.calibration else None
    tuning = open_source(recipe.tuning, loaded.base_dir, recipe.inputs, input_names, "tuning") if recipe.tuning else None
    splits = [s for s in (calibration, tuning, evaluation) if s is not None]
    for index, later in enumerate(splits):
        for earlier in splits[:index]:
            check_disjoint(earlier, later)
    for split in splits:
        for _ in checked_feeds(split, model.inputs):
            pass  # every sample must decode and fit the model before any work starts
    variants = options.only or tuple(recipe.variants)
    tuning, tuned_on_evaluation = tuning_source(recipe, tuple(variants), tuning, evaluation, options.allow_tuning_on_evaluation, file)
    destination = destination_for(recipe.promotion, loaded.base_dir, recipe.name, tuple(recipe.variants), options.version)
    return Prepared(
        recipe, loaded, model, evaluation, calibration, tuple(variants), charsets, destination.previous(), destination, tuning, tuned_on_evaluation
    )


# --------------------------------------------------------------------------- one variant


def judge_variant(
    name: str,
    candidate: Path,
    prepared: Prepared,
    split: Split,
    outcome: VariantOutcome,
    log: Log,
    detail: Log = lambda message: None,
) -> VariantOutcome:
    """Compare, measure and gate one built model file on `split` (the gates' evaluation set, or a search's tuning set)."""
    recipe = prepared.recipe
    variant = recipe.variants[name]
    unchanged = nothing_quantized(variant.method, prepared.model.path, candidate, getattr(variant, "op_types", None))
    if unchanged is not None:  # an FP32 copy: nothing to judge, never promoted
        outcome.status, outcome.note, outcome.model_path = "nothing_quantized", unchanged, candidate
        outcome.size_bytes = model_size(candidate)
        outcome.size_ratio = outcome.size_bytes / prepared.model.size_bytes
        log(f"{name}: NOTHING QUANTIZED: {unchanged}")
        return outcome
    comparisons = compare_variant(
        candidate,
        split.reference,
        split.source,
        prepared.model.inputs,
        recipe.outputs,
        {n: c.characters for n, c in prepared.charsets.items()},
        recipe.bench.threads,
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
    outcome.size_ratio = outcome.size_bytes / prepared.model.size_bytes
    feeds = [f for _, f in zip(range(recipe.bench.samples), (f for _, f in checked_feeds(split.source, prepared.model.inputs)))]
    gates = effective_gates(recipe.gates, recipe.variants[name].gates)
    bench = recipe.bench
    outcome.latency = latency_ratio(
        prepared.model.path, candidate, feeds, rounds=bench.rounds, warmup=bench.warmup, threads=bench.threads,
        bounds=latency_bounds(gates), max_rounds=bench.max_rounds or 4 * bench.rounds, max_seconds=bench.max_seconds,
    )  # fmt: skip
    variant_metrics = {"size_ratio": outcome.size_ratio, "latency_ratio": outcome.latency.ratio}
    intervals = {out: {m: e.interval for m, e in estimates.items()} for out, estimates in outcome.estimates.items()}
    intervals[""] = {"latency_ratio": outcome.latency.interval} if outcome.latency.interval else {}
    earlier = prepared.previous.metrics_of(name) if prepared.previous else None
    outcome.gates = judge_all(gates, outcome.metrics, variant_metrics, recipe.outputs, earlier, intervals)
    outcome.status = overall_verdict(outcome.gates)
    for gate in outcome.gates:
        detail(f"{name}:   {({'passed': 'pass', 'failed': 'FAIL'}).get(gate.verdict, gate.verdict.upper())} {gate.describe()}")
    log(f"{name}: {outcome.status.upper()} (size x{outcome.size_ratio:.2f}, latency x{outcome.latency.ratio:.2f})")
    return outcome


def build_context(prepared: Prepared, options: RunOptions, name: str) -> BuildContext:
    work_dir = options.out_dir / "work" / name
    work_dir.mkdir(parents=True, exist_ok=True)
    return BuildContext(
        model_path=prepared.model.path,
        model_sha256=prepared.model.sha256,
        model_inputs=prepared.model.inputs,
        work_dir=work_dir,
        cache_dir=options.cache_dir,
        calibration=prepared.calibration,
        tuning=prepared.tuning,
    )


def _search(
    name: str, variant: StaticInt8Options, prepared: Prepared, evaluation: Split, tuning: Split, options: RunOptions, outcome: VariantOutcome
) -> VariantOutcome:
    """The fallback search, handed this run's ways to build and to judge (on tuning, then the chosen one on
    evaluation); the lock file records what it chose."""
    context = build_context(prepared, options, name)

    def build(variant_options: StaticInt8Options, out_path: Path) -> BuildResult:
        return build_isolated(variant_options, context, out_path)

    def judge_on(split: Split) -> Callable[[Path], VariantOutcome]:
        def judge(candidate: Path) -> VariantOutcome:
            trial = VariantOutcome(name=name, method=outcome.method, options=outcome.options)
            return judge_variant(name, candidate, prepared, split, trial, options.log, options.detail)

        return judge

    def feeds(count: int) -> list[tuple[str, dict[str, np.ndarray]]]:
        return [(sample.id, f) for _, (sample, f) in zip(range(count), checked_feeds(tuning.source, prepared.model.inputs))]

    setup = SearchSetup(context.work_dir, options.out_dir / "variants" / f"{name}.onnx", tuning.name, len(tuning.source))
    rejudge = None if tuning is evaluation else judge_on(evaluation)
    chosen, excluded = search_fallback(variant, outcome, build, judge_on(tuning), rejudge, feeds, setup, options.log)
    if chosen.model_path is not None and chosen.search is not None:
        chosen.search["lock_file"] = str(write_lock(prepared.loaded, options.out_dir, name, [*variant.exclude_nodes, *excluded]))
    return chosen


def run_variant(name: str, prepared: Prepared, evaluation: Split, tuning: Split | None, options: RunOptions) -> VariantOutcome:
    variant = prepared.recipe.variants[name]
    outcome = VariantOutcome(name=name, method=variant.method, options=variant.model_dump(mode="json", exclude={"gates"}))
    out_path = options.out_dir / "variants" / f"{name}.onnx"
    options.log(f"{name}: building ({variant.method})")
    try:
        if getattr(variant, "repair", "off") != "off":
            from quant.fp16.repair import repair_fp16

            return repair_fp16(name, prepared, evaluation, tuning, options, outcome, build_context=build_context, judge_variant=judge_variant)
        if isinstance(variant, StaticInt8Options) and variant.fallback is not None:
            assert tuning is not None  # prepare() refused a search without a tuning split
            return _search(name, variant, prepared, evaluation, tuning, options, outcome)
        result = build_isolated(variant, build_context(prepared, options, name), out_path)
        outcome.build = result.details
        options.detail(f"{name}: built {json.dumps(result.details, default=str)[:2000]}")
        return judge_variant(name, result.path, prepared, evaluation, outcome, options.log, options.detail)
    except BuildError as error:
        outcome.status, outcome.error = "error", str(error)
        options.log(f"{name}: ERROR {error}")
        return outcome


# --------------------------------------------------------------------------- the run


def _select_for_release(
    recipe: Recipe, outcomes: list[VariantOutcome], passes: Callable[[VariantOutcome], bool] = lambda o: o.passed
) -> tuple[list[VariantOutcome], bool]:
    """(variants to promote, whether the promotion policy was met)."""
    passing = [o for o in outcomes if passes(o)]
    policy = recipe.promotion.policy
    if policy == "all_or_nothing":
        met = len(passing) == len(outcomes)
        return (passing if met else []), met
    if policy == "best":
        if not passing:
            return [], False
        return [min(passing, key=_rank_key(recipe))], True
    return passing, bool(passing)


def run_verdict(recipe: Recipe, outcomes: list[VariantOutcome], promoted: list[VariantOutcome], policy_met: bool) -> tuple[int, str]:
    """(exit code, one line): 0 policy met; 4 only undecided variants kept it from being met; 1 otherwise."""
    marked = ("nothing_quantized", "inconclusive")
    failing = [o.name + (f" ({o.status.replace('_', ' ')})" if o.status in marked else "") for o in outcomes if not o.passed]
    if policy_met:
        return 0, f"PASS: promoted {', '.join(o.name for o in promoted)}" + (f"; did not pass: {', '.join(failing)}" if failing else "")
    # Undecided, not failed: the policy would have been met had the inconclusive variants passed.
    if _select_for_release(recipe, outcomes, lambda o: o.passed or o.status == "inconclusive")[1]:
        return EXIT_INCONCLUSIVE, (
            f"INCONCLUSIVE: promotion policy '{recipe.promotion.policy}' not met because a latency interval still straddled its "
            f"threshold after the extra rounds (rerun on a quieter machine or raise bench.max_rounds); did not pass: {', '.join(failing)}"
        )
    return 1, f"FAIL: promotion policy '{recipe.promotion.policy}' not met; did not pass: {', '.join(failing)}"


def _rank_key(recipe: Recipe) -> Callable[[VariantOutcome], float]:
    if recipe.promotion.rank_by == "latency_ratio":
        return lambda o: o.latency.ratio if o.latency else float("inf")
    return lambda o: o.size_ratio or float("inf")


def _variant_metrics(outcome: VariantOutcome) -> dict[str, dict[str, float]]:
    return metric_table(outcome.metrics, {"size_ratio": outcome.size_ratio, "latency_ratio": outcome.latency.ratio if outcome.latency else None})


def _manifest(prepared: Prepared, promoted: list[VariantOutcome], started: str) -> dict[str, Any]:
    recipe_file = prepared.loaded.path
    data = {"evaluation": {"fingerprint": prepared.evaluation.fingerprint, "samples": len(prepared.evaluation)}}
    if prepared.calibration is not None:
        data["calibration"] = {"fingerprint": prepared.calibration.fingerprint, "samples": len(prepared.calibration)}
    return json_number(
        {
            "schema_version": SCHEMA_VERSION,
            "recipe": {
                "name": prepared.recipe.name,
                "file": recipe_file.name,
                "sha256": file_sha256(recipe_file),
                "resolved": prepared.loaded.resolved,
            },
            "source_model": {"file": prepared.model.path.name, "sha256": prepared.model.sha256, "size_bytes": prepared.model.size_bytes},
            "data": data,
            "charsets": {name: charset.source for name, charset in prepared.charsets.items()},
            "created": started,
            "environment": environment(),
            "variants": {
                o.name: {
                    "method": o.method,
                    "options": o.options,
                    "file": f"{o.name}.onnx",
                    "size_ratio": o.size_ratio,
                    "latency_ratio": o.latency.ratio if o.latency else None,
                    "metrics": _variant_metrics(o),
                    "gates": [g.to_dict() for g in o.gates],
                }
                for o in promoted
            },
        }
    )


def _samples_record(source: SampleSource | None) -> dict[str, Any] | None:
    if source is None:
        return None
    return {"where": source.where, "fingerprint": source.fingerprint, "samples": [{"id": s.id, "sha256": s.fingerprint} for s in source.samples]}


def _split(name: SplitName, source: SampleSource, prepared: Prepared, options: RunOptions) -> Split:
    """A split with FP32's outputs on it (computed once, cached on disk)."""
    with Progress(f"FP32 reference ({name})", len(source)) as bar:
        reference = run_reference(
            prepared.model.path, prepared.model.sha256, source, prepared.model.inputs,
            inputs_signature(prepared.recipe.inputs),
            options.cache_dir, prepared.recipe.bench.threads, progress=bar.update,
        )  # fmt: skip
    return Split(name, source, reference)


def run(loaded: LoadedRecipe, options: RunOptions) -> RunResult:
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    prepared = prepare(loaded, options)
    recipe = prepared.recipe
    if options.validate_only:
        return RunResult(0, f"recipe, model and data are valid ({len(prepared.variants)} variant(s); nothing built)")
    for folder, flag in ((options.out_dir, "--out"), (options.cache_dir, "--cache")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise OutputError(
                f"cannot write the {'run' if flag == '--out' else 'cache'} folder: {error.strerror or error}",
                file=str(error.filename or folder),
                field=flag,
            ) from None
    prepared.destination.check_writable()  # before hours of building, not after

    evaluation = _split("evaluation", prepared.evaluation, prepared, options)
    reference = evaluation.reference
    tuning = None
    if prepared.tuning is not None:
        tuning = evaluation if prepared.tuned_on_evaluation else _split("tuning", prepared.tuning, prepared, options)
    if prepared.tuned_on_evaluation:
        options.log(TUNED_ON_EVALUATION)
    remove_stale_lock(loaded, options.out_dir)
    outcomes = [run_variant(name, prepared, evaluation, tuning, options) for name in prepared.variants]

    to_release, policy_met = _select_for_release(recipe, outcomes)
    published: Published | None = None
    if policy_met and to_release:
        published = prepared.destination.publish(
            Release(
                models={o.name: o.model_path for o in to_release if o.model_path},
                manifest=_manifest(prepared, to_release, started),
                metadata={o.name: _traceability(prepared, o) for o in to_release},
                metrics={o.name: _variant_metrics(o) for o in to_release},
                ranked=[o.name for o in sorted(to_release, key=_rank_key(recipe))],
                all_gates_passed=all(o.passed for o in outcomes),
            )
        )
    release = published.where if published else None
    exit_code, verdict = run_verdict(recipe, outcomes, to_release, policy_met)
    if prepared.tuned_on_evaluation:
        verdict = f"{verdict} ({TUNED_ON_EVALUATION})"
    summary = summary_markdown(
        recipe.name,
        outcomes,
        prepared.model.size_bytes,
        release,
        verdict,
        source=source_precision(prepared.model.path),
        one_value_outputs=frozenset(name for name, dims in prepared.model.outputs.items() if one_value_per_sample(dims)),
    )
    results = json_number(
        {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "quant", "version": __version__},
            "started": started,
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "recipe": {"name": recipe.name, "file": str(loaded.path), "sha256": file_sha256(loaded.path), "resolved": loaded.resolved},
            "model": {
                "file": str(prepared.model.path),
                "sha256": prepared.model.sha256,
                "size_bytes": prepared.model.size_bytes,
                "opset": prepared.model.opset,
            },
            "environment": environment(),
            "data": {
                "calibration": _samples_record(prepared.calibration),
                "tuning": _samples_record(prepared.tuning),
                "evaluation": _samples_record(prepared.evaluation),
                # Which split produced which number: every variant's metrics and gates come from `gates`;
                # a search's attempts and node ranking from `search` (variants[].search.tuned_on too).
                "splits": {
                    "gates": "evaluation",
                    "search": None if tuning is None else tuning.name,
                    "tuned_on_evaluation": prepared.tuned_on_evaluation,
                },
            },
            "charsets": {name: charset.source for name, charset in prepared.charsets.items()},
            "reference": {"seconds": round(reference.seconds, 3), "cache_hit": reference.cache_hit},
            "variants": {o.name: o.to_dict() for o in outcomes},
            "regression": compare_with_release(prepared.previous, {o.name: _variant_metrics(o) for o in outcomes if o.latency})
            if prepared.previous
            else None,
            "promotion": {
                "policy": recipe.promotion.policy,
                "met": policy_met,
                "promoted": [o.name for o in to_release] if release else [],
                "release": release,
                **(published.record if published else {}),
            },
            "verdict": verdict,
            "exit_code": exit_code,
        }
    )
    return RunResult(exit_code, verdict, outcomes, results, summary, release)


def _traceability(prepared: Prepared, outcome: VariantOutcome) -> dict[str, str]:
    """Metadata written into each promoted model so a file found on a device can be traced back."""
    return {
        "quant.recipe": prepared.recipe.name,
        "quant.variant": outcome.name,
        "quant.method": outcome.method,
        "quant.source_sha256": prepared.model.sha256,
        "quant.tool_version": __version__,
    }
