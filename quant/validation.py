"""Checks that need the recipe, the model and the data together, said at --validate rather than found
at the end of a run: gates whose metric cannot be produced, an FP16 variant of an FP16 model, and a
static INT8 variant of a model whose compute sits inside subgraphs."""

from __future__ import annotations

from pathlib import Path

from quant.charset import Charset
from quant.data.sources import SampleSource
from quant.errors import ModelError, RecipeError
from quant.gates import applicable_outputs
from quant.metrics.catalogue import CATALOGUE
from quant.precision import float_weight_types, weighted_ops_by_level
from quant.recipe.schema import Gate, OutputSpec, Recipe

NEED_HINTS = {
    "charset": "a character list (charset_metadata or charset_file)",
    "normalisation": "normalize or ignore_chars",
    "labels": "ground-truth labels in the evaluation source",
}


def all_gates(recipe: Recipe) -> list[tuple[str, int, Gate]]:
    """Every gate with where it is written (recipe-wide, then each variant's)."""
    found = [("gates", i, g) for i, g in enumerate(recipe.gates)]
    return found + [(f"variants.{v}.gates", i, g) for v, o in recipe.variants.items() for i, g in enumerate(o.gates)]


def _missing(spec: OutputSpec, need: str, labelled: bool) -> bool:
    if need == "charset":
        return not spec.has_charset
    if need == "normalisation":
        return not (spec.ignore_chars or spec.normalize)
    return not labelled


def check_gate_needs(recipe: Recipe, output_names: list[str], evaluation: SampleSource) -> None:
    """A gate whose metric no output can produce (a text metric on an output with no character list,
    a label metric without labels) is refused now, naming what is missing."""
    labelled = any(sample.label is not None for sample in evaluation.samples)
    for where, index, gate in all_gates(recipe):
        needs = CATALOGUE[gate.metric].needs
        outputs = applicable_outputs(gate, recipe.outputs, output_names) if needs else []
        lacking = {name: [n for n in needs if _missing(recipe.outputs.get(name, OutputSpec()), n, labelled)] for name in outputs}
        if outputs and all(lacking.values()):
            name = outputs[0]
            wanted = " and ".join(NEED_HINTS[n] for n in lacking[name])
            raise RecipeError(
                f"metric '{gate.metric}' needs {wanted} on output '{name}'; it would never be measured", field=f"{where}[{index}].metric"
            )


def check_not_already_fp16(recipe: Recipe, model_path: Path) -> None:
    """An fp16 variant of a model whose weights are already float16 has nothing to convert."""
    fp16_variants = [name for name, v in recipe.variants.items() if v.method == "fp16"]
    if not fp16_variants:
        return
    types = float_weight_types(model_path)
    if types.get("float16", 0) and not types.get("float32", 0):
        raise ModelError(
            f"the model is already FP16 ({types['float16']} float16 weights, no float32 ones): variant '{fp16_variants[0]}' has nothing to convert "
            "(remove it, or use the FP32 export of the model)",
            file=str(model_path),
            field=f"variants.{fp16_variants[0]}.method",
        )


TOP_LEVEL_ONLY_METHODS = ("static_int8", "inc")  # onnxruntime's QDQ quantizer and the calibrators read the top-level graph only


def check_subgraph_compute(recipe: Recipe, model_path: Path) -> None:
    """A model whose weighted ops all sit inside If/Loop/Scan subgraphs cannot be statically quantized:
    refused now, rather than built into an FP32 copy."""
    refused = [name for name, v in recipe.variants.items() if v.method in TOP_LEVEL_ONLY_METHODS]
    if not refused:
        return
    top, nested = weighted_ops_by_level(model_path)
    if nested and not top:
        listed = ", ".join(f"{op} x{count}" for op, count in nested.items())
        method = recipe.variants[refused[0]].method
        raise ModelError(
            f"the model's compute sits inside If/Loop/Scan subgraphs ({listed}), which {method} cannot quantize; "
            "dynamic_int8 quantizes inside subgraphs (or export the model without the wrapping If/Loop)",
            file=str(model_path),
            field=f"variants.{refused[0]}.method",
        )


def check_charset_covers_classes(recipe: Recipe, output_dims: dict[str, list[int | str | None]], charsets: dict[str, Charset]) -> None:
    """A character list shorter than the output's classes cannot turn them into text (a dictionary of
    another model, or `use_space_char` off for a model that has the space class)."""
    for name, charset in charsets.items():
        dims, axis = output_dims.get(name, []), recipe.outputs[name].axis
        classes = dims[axis] if -len(dims) <= axis < len(dims) else None
        entries = len(charset.characters)
        if isinstance(classes, int) and classes > entries:
            field = f"outputs.{name}.{'charset_file' if 'file' in charset.source else 'charset_metadata'}"
            raise RecipeError(
                f"the character list has {entries} entries (the blank, the listed characters"
                f"{', a space' if recipe.outputs[name].use_space_char else ''}) but output '{name}' has {classes} classes along axis {axis}",
                field=field,
            )
