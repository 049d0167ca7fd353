"""Everything a family run checks before it builds or writes anything: the parts and how they generate, the
encoder's inputs against the recipe, the data splits, the gates (only metrics a family produces), the destination."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from quant.checks import check_gates_supportable, check_splits
from quant.data.sources import SampleSource, open_source
from quant.errors import InputError, ModelError, RecipeError
from quant.metrics.catalogue import CATALOGUE, VARIANT_METRICS
from quant.recipe.family import FamilyRecipe, FamilyVariant
from quant.recipe.loader import LoadedRecipe
from quant.recipe.schema import WeightOnlyOptions
from quant.release.destination import Destination, destination_for
from quant.release.previous import PreviousRelease
from quant.seq2seq.family import FamilyInfo, inspect_family
from quant.validation import all_gates

# What a family is judged on: the generation metrics and the variant-wide ones (size of the whole family; latency per
# image and per token; latency_ratio is the per-token one, so a policy ranks families by it).
FAMILY_METRICS = VARIANT_METRICS


@dataclass(frozen=True)
class FamilyInputs:
    """What a family run works on, every part checked: nothing is built until all of it is."""

    recipe: FamilyRecipe
    loaded: LoadedRecipe
    family: FamilyInfo
    evaluation: SampleSource
    calibration: SampleSource | None
    tuning: SampleSource | None
    variants: tuple[str, ...]
    previous: PreviousRelease | None
    destination: Destination


def _check_gates(recipe: FamilyRecipe, labelled: bool, has_vocab: bool) -> None:
    for where, index, gate in all_gates(recipe):  # type: ignore[arg-type]  (reads .gates and .variants only)
        field = f"{where}[{index}]"
        if gate.output is not None:
            raise RecipeError("a family has no named outputs: its gates read the generated text (leave 'output' out)", field=f"{field}.output")
        if gate.metric not in FAMILY_METRICS:
            raise RecipeError(
                f"metric '{gate.metric}' is not measured on a model family; its metrics are: {', '.join(FAMILY_METRICS)}", field=f"{field}.metric"
            )
        if "labels" in CATALOGUE[gate.metric].needs and not labelled:
            raise RecipeError(f"metric '{gate.metric}' needs ground-truth labels in the evaluation source", field=f"{field}.metric")
        if "labels" in CATALOGUE[gate.metric].needs and not has_vocab:
            raise RecipeError(f"metric '{gate.metric}' needs a vocabulary to turn tokens into text", field="family.generation.vocab")


def check_family_inputs(loaded: LoadedRecipe, only: tuple[str, ...] = (), version: str | None = None) -> FamilyInputs:
    """Check the family, the recipe and the data; nothing is built and nothing is written."""
    try:
        return _check(loaded, only, version)
    except InputError as error:
        if error.file is None:  # every bad-input line names a file: the recipe, when nothing closer is known
            raise type(error)(error.detail, file=str(loaded.path), field=error.field) from None
        raise


def _check(loaded: LoadedRecipe, only: tuple[str, ...], version: str | None) -> FamilyInputs:
    recipe = loaded.recipe
    assert isinstance(recipe, FamilyRecipe)
    unknown = [v for v in only if v not in recipe.variants]
    if unknown:
        raise RecipeError(f"--only names unknown variant(s) {unknown}; the recipe has {list(recipe.variants)}", field="variants")
    family = inspect_family(recipe.family, loaded.base_dir)
    encoder = family.parts["encoder"]
    for name in recipe.inputs if recipe.evaluation.source.kind != "npz" else ():  # an .npz holds ready tensors by input name
        if name not in encoder.inputs:
            message = f"the encoder has no input '{name}'; its inputs are {list(encoder.inputs)}"
            raise ModelError(message, file=str(encoder.path), field=f"inputs.{name}")
    for name in encoder.inputs if recipe.evaluation.source.kind != "npz" else ():
        if name not in recipe.inputs:
            raise ModelError(f"encoder input '{name}' has no entry in the recipe's 'inputs'", file=str(loaded.path), field="inputs")
    names = list(encoder.inputs)
    evaluation = open_source(recipe.evaluation, loaded.base_dir, recipe.inputs, names, "evaluation")
    _check_gates(recipe, any(s.label is not None for s in evaluation.samples), family.has_vocabulary)
    check_gates_supportable(recipe, len(evaluation), str(loaded.path))  # type: ignore[arg-type]
    calibration = open_source(recipe.calibration, loaded.base_dir, recipe.inputs, names, "calibration") if recipe.calibration else None
    tuning = open_source(recipe.tuning, loaded.base_dir, recipe.inputs, names, "tuning") if recipe.tuning else None
    check_splits([s for s in (calibration, tuning, evaluation) if s is not None], encoder.inputs)
    for name in only or tuple(recipe.variants):
        _check_named_nodes(name, recipe.variants[name], family)
    destination = destination_for(recipe.promotion, loaded.base_dir, recipe.name, tuple(recipe.variants), version)
    variants = only or tuple(recipe.variants)
    return FamilyInputs(recipe, loaded, family, evaluation, calibration, tuning, tuple(variants), destination.previous(), destination)


def _check_named_nodes(name: str, variant: FamilyVariant, family: FamilyInfo) -> None:
    """Nodes a weight_only part names (overrides, exclude_nodes) must be MatMuls of that part: with a group (`all`,
    `decoders`) an LM head name that only the decoders have is refused now, not after the other variants are built."""
    for role, key in variant.entries().items():
        options = variant.parts[key]
        if not isinstance(options, WeightOnlyOptions):
            continue
        part = family.parts[role]
        matmuls = {node.name for node in onnx.load(str(part.path), load_external_data=False).graph.node if node.op_type == "MatMul"}
        for field in ("overrides", "exclude_nodes"):
            unknown = sorted(set(getattr(options, field)) - matmuls)
            if unknown:
                raise RecipeError(
                    f"no MatMul node named {unknown} in the {role} part ({part.path.name}); name the parts that have it instead of '{key}'"
                    if key != role else f"no MatMul node named {unknown} in the {role} part ({part.path.name})",
                    field=f"variants.{name}.parts.{key}.{field}",
                )
