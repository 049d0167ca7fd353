"""A run, wired: check the inputs, run FP32 once per split, build and judge each variant, apply the release
policy, publish, and hand back the typed results. Each step is a module of its own; this one only connects them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from quant import __version__
from quant.checks import RunInputs, check_inputs, check_output_folders
from quant.data.feeds import checked_feeds
from quant.data.sources import SampleSource, inputs_signature
from quant.errors import BuildError
from quant.evaluate import run_reference
from quant.executor import build_isolated, current
from quant.judge import LatencyWhen, judge_variant
from quant.lockfile import remove_stale_lock, write_lock
from quant.methods.base import BuildContext, BuildResult
from quant.needs import Needs, declaring
from quant.outcome import VariantOutcome
from quant.precision import one_value_per_sample, source_precision
from quant.progress import Progress, log_nothing, log_stderr
from quant.recipe.family import FamilyRecipe
from quant.recipe.loader import LoadedRecipe
from quant.recipe.schema import StaticInt8Options
from quant.release.bundle import Published, Release
from quant.release.policy import ranked, run_verdict, select_for_release
from quant.report.summary import summary_markdown
from quant.results import PromotionRecord, RunResults, build_manifest, build_results, now, variant_metric_table
from quant.search import SearchSetup, search_fallback
from quant.splits import TUNED_ON_EVALUATION, Split, SplitName
from quant.stages import StageLog, record_calibration, recording, timed

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    cache_dir: Path
    only: tuple[str, ...] = ()
    validate_only: bool = False
    version: str | None = None
    quiet: bool = False  # --quiet: no progress, and builds log nothing
    log: Log = log_stderr
    detail: Log = lambda message: None  # --verbose: every gate and build figure, not just the verdict
    allow_tuning_on_evaluation: bool = False  # --allow-tuning-on-evaluation: searches may choose on the gate split


@dataclass
class RunResult:
    exit_code: int
    verdict: str
    outcomes: list[VariantOutcome] = field(default_factory=list)
    results: RunResults | None = None  # None for --validate
    summary: str = ""
    release: str | None = None


def run(loaded: LoadedRecipe, options: RunOptions) -> RunResult:
    if isinstance(loaded.recipe, FamilyRecipe):  # several parts generating together: quant.seq2seq.run
        from quant.seq2seq.run import run_family

        family = run_family(loaded, options)
        return RunResult(family.exit_code, family.verdict, family.outcomes, family.results, family.summary, family.release)
    with recording() as stages:
        return _run(loaded, options, stages)


def _run(loaded: LoadedRecipe, options: RunOptions, stages: StageLog) -> RunResult:
    started = now()
    with timed("checks"):
        inputs = check_inputs(loaded, options.only, options.version, options.allow_tuning_on_evaluation)
    if options.validate_only:
        return RunResult(0, f"recipe, model and data are valid ({len(inputs.variants)} variant(s); nothing built)")
    check_output_folders(options.out_dir, options.cache_dir)
    inputs.destination.check_writable()  # before hours of building, not after
    needs = Needs.of(inputs.recipe)
    current().check(needs, _places(inputs, options))  # a cluster: every node reaches the files, a node fits the benchmark

    with declaring(needs):  # what each unit declares to a cluster scheduler
        evaluation, tuning = _splits(inputs, options)
        remove_stale_lock(loaded, options.out_dir)
        # Variants are independent: the executor runs their builds and evaluations side by side within its jobs.
        outcomes = current().each([partial(run_variant, name, inputs, evaluation, tuning, options) for name in inputs.variants])

    promotion = inputs.recipe.promotion
    to_release, policy_met = select_for_release(promotion, outcomes)
    with timed("publish"):
        published = _publish(inputs, outcomes, to_release, started) if policy_met and to_release else None
    release = published.where if published else None
    exit_code, verdict = run_verdict(promotion, outcomes, to_release, policy_met)
    if inputs.tuned_on_evaluation:
        verdict = f"{verdict} ({TUNED_ON_EVALUATION})"
    record = PromotionRecord.model_validate(
        {"policy": promotion.policy, "met": policy_met, "promoted": [o.name for o in to_release] if release else [], "release": release}
        | (published.record if published else {})
    )
    results = build_results(inputs, evaluation, tuning, outcomes, record, verdict, exit_code, started, stages.records())
    return RunResult(exit_code, verdict, outcomes, results, _summary(inputs, outcomes, release, verdict), release)


def _places(inputs: RunInputs, options: RunOptions) -> dict[str, Path]:
    """What the units of work read and write, by the field that names it: every worker must see these as the driver does."""
    places = {"--out": options.out_dir, "--cache": options.cache_dir, "model.path": inputs.model.path}
    for source in (inputs.calibration, inputs.tuning, inputs.evaluation):
        if source is not None:
            places[f"{source.field}.source"] = Path(source.where)
    return places


def _splits(inputs: RunInputs, options: RunOptions) -> tuple[Split, Split | None]:
    """The evaluation split and the tuning split (None without a search), each with FP32's outputs on it."""
    evaluation = _split("evaluation", inputs.evaluation, inputs, options)
    tuning = None
    if inputs.tuning is not None:
        tuning = evaluation if inputs.tuned_on_evaluation else _split("tuning", inputs.tuning, inputs, options)
    if inputs.tuned_on_evaluation:
        options.log(TUNED_ON_EVALUATION)
    return evaluation, tuning


def _split(name: SplitName, source: SampleSource, inputs: RunInputs, options: RunOptions) -> Split:
    """A split with FP32's outputs on it (computed once, cached on disk)."""
    executor = current()
    with timed("reference", split=name), Progress(f"FP32 reference ({name})", len(source), options.quiet) as bar:
        reference = run_reference(
            inputs.model.path, inputs.model.sha256, source, inputs.model.inputs,
            inputs_signature(inputs.recipe.inputs),
            options.cache_dir, executor.inference_threads(inputs.recipe.bench.threads), progress=bar.update, state=inputs.recipe.state,
            in_windows=executor.in_windows,  # each window counted as a unit of the executor (shards under --jobs)
        )  # fmt: skip
    return Split(name, source, reference)


def _publish(inputs: RunInputs, outcomes: list[VariantOutcome], to_release: list[VariantOutcome], started: str) -> Published:
    return inputs.destination.publish(
        Release(
            models={o.name: o.model_path for o in to_release if o.model_path},
            manifest=build_manifest(inputs, to_release, started).to_dict(),
            metadata={o.name: _traceability(inputs, o) for o in to_release},
            metrics={o.name: variant_metric_table(o) for o in to_release},
            ranked=ranked(inputs.recipe.promotion, to_release),
            all_gates_passed=all(o.passed for o in outcomes),
        )
    )


def _summary(inputs: RunInputs, outcomes: list[VariantOutcome], release: str | None, verdict: str) -> str:
    model = inputs.model
    return summary_markdown(
        inputs.recipe.name,
        outcomes,
        model.size_bytes,
        release,
        verdict,
        source=source_precision(model.path),
        one_value_outputs=frozenset(name for name, dims in model.outputs.items() if one_value_per_sample(dims)),
    )


# --------------------------------------------------------------------------- one variant


def build_context(inputs: RunInputs, options: RunOptions, name: str) -> BuildContext:
    work_dir = options.out_dir / "work" / name
    work_dir.mkdir(parents=True, exist_ok=True)
    return BuildContext(
        model_path=inputs.model.path,
        model_sha256=inputs.model.sha256,
        model_inputs=inputs.model.inputs,
        work_dir=work_dir,
        cache_dir=options.cache_dir,
        calibration=inputs.calibration,
        tuning=inputs.tuning,
        log=log_nothing if options.quiet else log_stderr,  # top-level functions: the build runs in a child process
        threads=inputs.recipe.bench.threads,  # explicit, whatever --jobs is: the same bytes either way
    )


def _search(
    name: str, variant: StaticInt8Options, inputs: RunInputs, evaluation: Split, tuning: Split, options: RunOptions, outcome: VariantOutcome
) -> VariantOutcome:
    """The fallback search, handed this run's ways to build and to judge (on tuning, then the chosen one on
    evaluation); the lock file records what it chose."""
    context = build_context(inputs, options, name)

    def build(variant_options: StaticInt8Options, out_path: Path) -> BuildResult:
        return _timed_build(name, variant_options, context, out_path, "search build")

    def judge_on(split: Split, latency_when: LatencyWhen) -> Callable[[Path], VariantOutcome]:
        def judge(candidate: Path) -> VariantOutcome:
            trial = VariantOutcome(name=name, method=outcome.method, options=outcome.options)
            return judge_variant(name, candidate, inputs, split, trial, options.log, options.detail, latency_when)

        return judge

    def feeds(count: int) -> list[tuple[str, dict[str, np.ndarray]]]:
        return [(sample.id, f) for _, (sample, f) in zip(range(count), checked_feeds(tuning.source, inputs.model.inputs))]

    setup = SearchSetup(context.work_dir, options.out_dir / "variants" / f"{name}.onnx", tuning.name, len(tuning.source))
    assert variant.fallback is not None
    attempts_latency: LatencyWhen = "if_untimed_pass" if variant.fallback.latency == "once_accurate" else "always"
    # Tuning on the evaluation split (allowed explicitly) judges the chosen attempt there once: every latency is measured.
    rejudge = None if tuning is evaluation else judge_on(evaluation, "always")
    judge = judge_on(tuning, "always" if rejudge is None else attempts_latency)
    chosen, chosen_options = search_fallback(variant, outcome, build, judge, rejudge, feeds, setup, options.log)
    if chosen.model_path is not None and chosen.search is not None:
        chosen.search["lock_file"] = str(write_lock(inputs.loaded, options.out_dir, name, variant, chosen_options))
    return chosen


def _timed_build(name: str, variant: object, context: BuildContext, out_path: Path, stage: str) -> BuildResult:
    """A build as a unit of the executor, recorded as `stage` (its calibration, measured in the build's process, with it)."""
    with timed(stage, name):
        result = build_isolated(variant, context, out_path)
        record_calibration(name, result.details)
    return result


def run_variant(name: str, inputs: RunInputs, evaluation: Split, tuning: Split | None, options: RunOptions) -> VariantOutcome:
    variant = inputs.recipe.variants[name]
    outcome = VariantOutcome(name=name, method=variant.method, options=variant.model_dump(mode="json", exclude={"gates"}))
    out_path = options.out_dir / "variants" / f"{name}.onnx"
    options.log(f"{name}: building ({variant.method})")
    try:
        if getattr(variant, "repair", "off") != "off":
            from quant.fp16.repair import repair_fp16

            with timed("fp16 repair", name):  # its evaluation and latency stages are inside
                return repair_fp16(name, inputs, evaluation, tuning, options, outcome, build_context=build_context, judge_variant=judge_variant)
        if isinstance(variant, StaticInt8Options) and variant.fallback is not None:
            assert tuning is not None  # prepare() refused a search without a tuning split
            return _search(name, variant, inputs, evaluation, tuning, options, outcome)
        result = _timed_build(name, variant, build_context(inputs, options, name), out_path, "build")
        outcome.build = result.details
        options.detail(f"{name}: built {json.dumps(result.details, default=str)[:2000]}")
        return judge_variant(name, result.path, inputs, evaluation, outcome, options.log, options.detail)
    except BuildError as error:
        outcome.status, outcome.error = "error", str(error)
        options.log(f"{name}: ERROR {error}")
        return outcome


def _traceability(inputs: RunInputs, outcome: VariantOutcome) -> dict[str, str]:
    """Metadata written into each promoted model so a file found on a device can be traced back."""
    return {
        "quant.recipe": inputs.recipe.name,
        "quant.variant": outcome.name,
        "quant.method": outcome.method,
        "quant.source_sha256": inputs.model.sha256,
        "quant.tool_version": __version__,
    }
