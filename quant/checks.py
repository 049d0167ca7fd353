"""Everything checked before anything is built or written: recipe against model, data and its splits, gates,
output folders, destination."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from quant.charset import Charset, output_charsets
from quant.data.feeds import checked_feeds
from quant.data.sources import SampleSource, check_disjoint, open_source
from quant.errors import InputError, ModelError, OutputError, RecipeError
from quant.gates import applicable_outputs
from quant.intervals import unsupported_reason
from quant.metrics.catalogue import CATALOGUE, VARIANT_METRICS
from quant.metrics.samples import interval_method
from quant.model import Dims, ModelInfo, inspect_model, locate
from quant.recipe.loader import LoadedRecipe
from quant.recipe.schema import Recipe
from quant.release.destination import Destination, destination_for
from quant.release.previous import PreviousRelease
from quant.splits import tuning_source
from quant.stateful import check_state
from quant.validation import all_gates, check_charset_covers_classes, check_gate_needs, check_not_already_fp16, check_subgraph_compute


@dataclass(frozen=True)
class RunInputs:
    """What a run works on, every part checked: nothing is built until all of it is."""

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


def check_recipe_against_model(recipe: Recipe, model: ModelInfo, charsets: dict[str, Charset], file: str) -> None:
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


def check_gates_supportable(recipe: Recipe, samples: int, file: str) -> None:
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


def check_splits(splits: list[SampleSource], model_inputs: dict[str, Dims]) -> None:
    """No two splits share a sample (by content), and every sample decodes and fits the model, before any work starts."""
    for index, later in enumerate(splits):
        for earlier in splits[:index]:
            check_disjoint(earlier, later)
    for split in splits:
        for _ in checked_feeds(split, model_inputs):
            pass


def check_inputs(
    loaded: LoadedRecipe, only: tuple[str, ...] = (), version: str | None = None, allow_tuning_on_evaluation: bool = False
) -> RunInputs:
    """Check the recipe, model and data; nothing is built and nothing is written."""
    try:
        return _check_inputs(loaded, only, version, allow_tuning_on_evaluation)
    except InputError as error:
        if error.file is None:  # every bad-input line names a file: the recipe, when nothing closer is known
            raise type(error)(error.detail, file=str(loaded.path), field=error.field) from None
        raise


def _check_inputs(loaded: LoadedRecipe, only: tuple[str, ...], version: str | None, allow_tuning_on_evaluation: bool) -> RunInputs:
    recipe = loaded.recipe
    file = str(loaded.path)
    unknown = [v for v in only if v not in recipe.variants]
    if unknown:
        raise RecipeError(f"--only names unknown variant(s) {unknown}; the recipe has {list(recipe.variants)}", file=file, field="variants")
    model_path = locate(recipe.model, loaded.base_dir)
    model = inspect_model(model_path)
    check_not_already_fp16(recipe, model_path)
    check_subgraph_compute(recipe, model_path)
    charsets = output_charsets({n: s for n, s in recipe.outputs.items() if n in model.outputs}, model.metadata, loaded.base_dir)
    check_charset_covers_classes(recipe, model.outputs, charsets)
    check_recipe_against_model(recipe, model, charsets, file)
    input_names = list(model.inputs)
    evaluation = open_source(recipe.evaluation, loaded.base_dir, recipe.inputs, input_names, "evaluation")
    check_gate_needs(recipe, list(model.outputs), evaluation)
    check_gates_supportable(recipe, len({s.sequence for s in evaluation.samples}) if recipe.state else len(evaluation), file)
    calibration = open_source(recipe.calibration, loaded.base_dir, recipe.inputs, input_names, "calibration") if recipe.calibration else None
    tuning = open_source(recipe.tuning, loaded.base_dir, recipe.inputs, input_names, "tuning") if recipe.tuning else None
    check_splits([s for s in (calibration, tuning, evaluation) if s is not None], model.inputs)
    check_state(recipe.state, model, [s for s in (evaluation, tuning) if s is not None], file)
    variants = only or tuple(recipe.variants)
    tuning, tuned_on_evaluation = tuning_source(recipe, tuple(variants), tuning, evaluation, allow_tuning_on_evaluation, file)
    destination = destination_for(recipe.promotion, loaded.base_dir, recipe.name, tuple(recipe.variants), version)
    return RunInputs(
        recipe, loaded, model, evaluation, calibration, tuple(variants), charsets, destination.previous(), destination, tuning, tuned_on_evaluation
    )


def check_output_folders(out_dir: Path, cache_dir: Path) -> None:
    """The run and cache folders exist and take a write, before hours of building."""
    for folder, flag in ((out_dir, "--out"), (cache_dir, "--cache")):
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
