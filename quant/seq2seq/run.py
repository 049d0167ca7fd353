"""A family run, wired: check the parts and data, generate with the FP32 family once, build and judge each variant
(a method per part), apply the release policy, promote every file of each passing variant together, write the lock
file, and hand back the typed results. Each step is a module of its own; this one only connects them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant import __version__
from quant.data.feeds import checked_feeds
from quant.errors import BuildError
from quant.executor import current
from quant.lockfile import remove_stale_lock, write_family_lock
from quant.model import file_sha256
from quant.needs import Needs, declaring
from quant.outcome import VariantOutcome
from quant.progress import log_nothing, log_stderr
from quant.provenance import environment
from quant.recipe.family import ROLES
from quant.release.bundle import FamilyFile, Published, Release
from quant.release.policy import ranked, run_verdict, select_for_release
from quant.release.previous import changes_since_release
from quant.report.summary import summary_markdown
from quant.results import (
    DataRecord,
    Manifest,
    ManifestRecipe,
    ModelRecord,
    PromotionRecord,
    RecipeRecord,
    ReferenceRecord,
    RunResults,
    SourceModelRecord,
    SplitsRecord,
    ToolRecord,
    data_fingerprints,
    manifest_variant,
    now,
    samples_record,
)
from quant.seq2seq.build import FP32, BuiltPart, FamilyBuild, build_family_variant, method_summary
from quant.seq2seq.checks import FamilyInputs, check_family_inputs
from quant.seq2seq.compare import reference_generations
from quant.seq2seq.family import open_sessions
from quant.seq2seq.judge import TEXT, Reference, judge_family
from quant.testpoint import pause_point

if TYPE_CHECKING:
    from quant.recipe.loader import LoadedRecipe
    from quant.runner import RunOptions


@dataclass(frozen=True)
class FamilyRunResult:
    """What the runner turns into its RunResult (kept apart so this module never imports the runner)."""

    exit_code: int
    verdict: str
    outcomes: list[VariantOutcome]
    results: RunResults | None
    summary: str = ""
    release: str | None = None


def run_family(loaded: LoadedRecipe, options: RunOptions) -> FamilyRunResult:
    started = now()
    inputs = check_family_inputs(loaded, options.only, options.version)
    if options.validate_only:
        return FamilyRunResult(0, f"recipe, model family and data are valid ({len(inputs.variants)} variant(s); nothing built)", [], None)
    from quant.checks import check_output_folders

    check_output_folders(options.out_dir, options.cache_dir)
    inputs.destination.check_writable()  # before building, not after
    needs = Needs.of(inputs.recipe)
    current().check(needs, _places(inputs, options))  # a cluster: every node reaches the parts and data, a node fits a unit
    with declaring(needs):  # what each part's build declares to a cluster scheduler, as a one-model run's units do
        reference = _reference(inputs, options)
        remove_stale_lock(loaded, options.out_dir)
        built: dict[str, dict[str, BuiltPart]] = {}
        outcomes = [_run_variant(name, inputs, reference, options, built) for name in inputs.variants]

    promotion = inputs.recipe.promotion
    to_release, policy_met = select_for_release(promotion, outcomes)
    published = _publish(inputs, outcomes, to_release, built, started) if policy_met and to_release else None
    release = published.where if published else None
    exit_code, verdict = run_verdict(promotion, outcomes, to_release, policy_met)
    lock = _lock(inputs, options, built)
    options.log(f"lock file: {lock}")
    record = PromotionRecord.model_validate(
        {"policy": promotion.policy, "met": policy_met, "promoted": [o.name for o in to_release] if release else [], "release": release}
        | (published.record if published else {})
    )
    results = _results(inputs, reference, outcomes, record, verdict, exit_code, started)
    family = inputs.family
    summary = summary_markdown(inputs.recipe.name, outcomes, family.size_bytes, release, verdict, source="FP32 family")
    return FamilyRunResult(exit_code, verdict, outcomes, results, summary, release)


def _places(inputs: FamilyInputs, options: RunOptions) -> dict[str, Path]:
    """What the builds read and write, by the field that names it: every worker must see these as the driver does."""
    places = {"--out": options.out_dir, "--cache": options.cache_dir, "family.folder": inputs.family.folder}
    for source in (inputs.calibration, inputs.evaluation):
        if source is not None:
            places[f"{source.field}.source"] = Path(source.where)
    return places


def _reference(inputs: FamilyInputs, options: RunOptions) -> Reference:
    """FP32's greedy generation of every held-out image, once per run (each variant is compared with it)."""
    family = inputs.family
    sessions = open_sessions({role: info.path for role, info in family.parts.items()}, inputs.recipe.bench.threads)
    samples = list(checked_feeds(inputs.evaluation, family.encoder_inputs))
    options.log(f"FP32 family: generating on {len(samples)} evaluation images")
    feeds = [f for _, f in samples]
    pause_point("reference")
    started = time.perf_counter()
    generations = reference_generations(sessions, feeds, family.generation)
    seconds = time.perf_counter() - started
    return Reference(sessions, feeds, [s.id for s, _ in samples], [s.label for s, _ in samples], generations, seconds)


Built = dict[str, dict[str, BuiltPart]]  # variant -> role -> its built part


def _run_variant(name: str, inputs: FamilyInputs, reference: Reference, options: RunOptions, built: Built) -> VariantOutcome:
    variant = inputs.recipe.variants[name]
    chosen = variant.resolved()
    planned = {role: chosen[role].method if role in chosen else FP32 for role in ROLES}
    outcome = VariantOutcome(name=name, method="+".join(sorted({o.method for o in chosen.values()})), options={"parts": planned})
    options.log(f"{name}: building ({', '.join(f'{role} {o.method}' for role, o in chosen.items())})")
    setup = FamilyBuild(
        inputs.family,
        options.out_dir / "variants" / name,
        options.out_dir / "work" / name,
        options.cache_dir,
        inputs.calibration,
        log_nothing if options.quiet else log_stderr,
    )
    try:
        parts = build_family_variant(variant, setup)
    except BuildError as error:
        outcome.status, outcome.error = "error", str(error)
        options.log(f"{name}: ERROR {error}")
        return outcome
    built[name] = parts
    outcome.method = method_summary(parts)
    outcome.options = {"parts": {role: {"method": p.method, **(p.options or {})} for role, p in parts.items()}}
    outcome.build = {"parts": {role: p.to_dict() for role, p in parts.items()}}
    outcome.model_path = setup.folder
    unchanged = [role for role, p in parts.items() if p.unchanged]
    if unchanged and len(unchanged) == len(chosen):  # every part the variant names came out an FP32 copy
        outcome.status = "nothing_quantized"
        outcome.note = "; ".join(f"{role}: {parts[role].unchanged}" for role in unchanged)
        options.log(f"{name}: NOTHING QUANTIZED: {outcome.note}")
        return outcome
    if unchanged:
        outcome.note = "nothing quantized in " + ", ".join(unchanged)
    return judge_family(name, {role: p.path for role, p in parts.items()}, inputs, reference, outcome, options.log)


# --------------------------------------------------------------------------- release, lock and results


def _traceability(inputs: FamilyInputs, variant: str, part: BuiltPart) -> dict[str, str]:
    """Metadata written into each promoted part so a file found on a device can be traced back."""
    return {
        "quant.recipe": inputs.recipe.name,
        "quant.variant": variant,
        "quant.part": part.role,
        "quant.method": part.method,
        "quant.source_sha256": inputs.family.parts[part.role].sha256,
        "quant.tool_version": __version__,
    }


def _family_record(inputs: FamilyInputs) -> dict[str, Any]:
    family = inputs.family
    config = family.generation
    return {
        "folder": str(family.folder.resolve()),
        "sha256": family.sha256,
        "parts": {role: {"file": info.path.name, "sha256": info.sha256, "size_bytes": info.size_bytes} for role, info in family.parts.items()},
        "generation": {"start_token": config.start_token, "end_token": config.end_token, "max_new_tokens": config.max_new_tokens},
        "assets": {name: file_sha256(path) for name, path in family.assets.items()},
    }


def _metric_table(outcome: VariantOutcome) -> dict[str, dict[str, float]]:
    return {TEXT: dict(outcome.metrics.get(TEXT, {}))}


def _manifest(inputs: FamilyInputs, promoted: list[VariantOutcome], built: dict[str, dict[str, BuiltPart]], started: str) -> Manifest:
    recipe_file, family = inputs.loaded.path, inputs.family
    data = data_fingerprints(inputs.evaluation, inputs.calibration)
    return Manifest(
        recipe=ManifestRecipe(name=inputs.recipe.name, file=recipe_file.name, sha256=file_sha256(recipe_file), resolved=inputs.loaded.resolved),
        source_model=SourceModelRecord(file=family.folder.name, sha256=family.sha256, size_bytes=family.size_bytes),
        data=data,
        charsets={},
        created=started,
        environment=environment(),
        variants={
            o.name: manifest_variant(
                o, f"{o.name}/", _metric_table(o), {role: {**p.to_dict(), "file": f"{o.name}/{p.path.name}"} for role, p in built[o.name].items()}
            )
            for o in promoted
        },
        family=_family_record(inputs),
    )


def _publish(
    inputs: FamilyInputs, outcomes: list[VariantOutcome], to_release: list[VariantOutcome], built: dict[str, dict[str, BuiltPart]], started: str
) -> Published:
    families = {
        o.name: {
            **{p.path.name: FamilyFile(p.path, _traceability(inputs, o.name, p)) for p in built[o.name].values()},
            **{name: FamilyFile(path, None) for name, path in inputs.family.assets.items()},
        }
        for o in to_release
    }
    return inputs.destination.publish(
        Release(
            models={},
            manifest=_manifest(inputs, to_release, built, started).to_dict(),
            metadata={},
            metrics={o.name: _metric_table(o) for o in to_release},
            ranked=ranked(inputs.recipe.promotion, to_release),
            all_gates_passed=all(o.passed for o in outcomes),
            families=families,
        )
    )


def _lock(inputs: FamilyInputs, options: RunOptions, built: dict[str, dict[str, BuiltPart]]) -> Path:
    """Every part's choice pinned: the FP32 files by sha256, each built part's method with all its options."""
    folder = inputs.family.folder
    parts = {role: {"path": info.path.relative_to(folder).as_posix(), "sha256": info.sha256} for role, info in inputs.family.parts.items()}
    chosen = {
        name: {role: p.options for role, p in parts_built.items() if p.options is not None}
        for name, parts_built in built.items()
    }
    config = inputs.family.generation
    generation = {"start_token": config.start_token, "end_token": config.end_token, "max_new_tokens": config.max_new_tokens}
    return write_family_lock(inputs.loaded, options.out_dir, parts, generation, chosen)


def _results(
    inputs: FamilyInputs,
    reference: Reference,
    outcomes: list[VariantOutcome],
    promotion: PromotionRecord,
    verdict: str,
    exit_code: int,
    started: str,
) -> RunResults:
    loaded, family = inputs.loaded, inputs.family
    opset = max(info.opset for info in family.parts.values())
    record = _family_record(inputs)
    record["reference"] = {
        "texts": {i: family.vocabulary.decode(g.tokens) for i, g in zip(reference.ids, reference.generations)},
        "unfinished": sum(not g.finished for g in reference.generations),
    }
    return RunResults(
        tool=ToolRecord(name="quant", version=__version__),
        started=started,
        finished=now(),
        recipe=RecipeRecord(name=inputs.recipe.name, file=str(loaded.path), sha256=file_sha256(loaded.path), resolved=loaded.resolved),
        model=ModelRecord(file=str(family.folder), sha256=family.sha256, size_bytes=family.size_bytes, opset=opset),
        environment=environment(),
        data=DataRecord(
            calibration=samples_record(inputs.calibration),
            tuning=samples_record(inputs.tuning),
            evaluation=samples_record(inputs.evaluation),  # type: ignore[arg-type]
            splits=SplitsRecord(gates="evaluation", search=None, tuned_on_evaluation=False),
        ),
        charsets={},
        reference=ReferenceRecord(seconds=round(reference.seconds, 3), cache_hit=False),
        variants={o.name: o.to_dict() for o in outcomes},
        regression=changes_since_release(inputs.previous, {o.name: _metric_table(o) for o in outcomes if o.latency}) if inputs.previous else None,
        promotion=promotion,
        verdict=verdict,
        exit_code=exit_code,
        family=record,
    )
