"""docs/recipes.md, generated from the schema so the reference can never drift from the code."""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter

from quant.metrics.catalogue import CATALOGUE
from quant.recipe import family as f
from quant.recipe import schema as s

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Recipe (top level)", s.Recipe),
    ("model", s.ModelSource),
    ("inputs.<name>", s.ImageInput),
    ("inputs.<name>.resize (mode: fixed)", s.ResizeFixed),
    ("inputs.<name>.resize (mode: height)", s.ResizeToHeight),
    ("inputs.<name>.resize (mode: limit_side)", s.ResizeLimitSide),
    ("outputs.<name>", s.OutputSpec),
    ("calibration / evaluation", s.DataSet),
    ("source: images", s.ImageFolderSource),
    ("source: dataset", s.DatasetSource),
    ("source: npz", s.NpzSource),
    ("variants.<name> (method: fp16)", s.Fp16Options),
    ("variants.<name> (method: dynamic_int8)", s.DynamicInt8Options),
    ("variants.<name> (method: static_int8)", s.StaticInt8Options),
    ("variants.<name> (method: inc)", s.IncOptions),
    ("variants.<name> (method: weight_only)", s.WeightOnlyOptions),
    ("variants.<name> (method: weight_only).overrides.<node>", s.WeightOnlyOverride),
    ("prepare", s.Prepare),
    ("fallback", s.Fallback),
    ("fallback.candidates[]", s.SearchCandidate),
    ("fallback.sensitive_overrides", s.SensitiveOverrides),
    ("variants.<name> (method: static_int8).tensor_overrides.<tensor>", s.TensorOverride),
    ("gates[]", s.Gate),
    ("bench", s.Bench),
    ("promotion", s.Promotion),
    ("Family recipe (top level, instead of `model`)", f.FamilyRecipe),
    ("family", f.Family),
    ("family.parts.<role>", f.FamilyPart),
    ("family.generation", f.Generation),
    ("variants.<name> (family)", f.FamilyVariant),
]


def _type_name(annotation: Any) -> str:
    """A readable type: unions and Annotated wrappers unwrapped, schema classes by name."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (Union, UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " / ".join(f"`{a}`" for a in args)
    if origin in (list, tuple, dict):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return f"`{value.model_dump(mode='json')}`" if isinstance(value, BaseModel) else f"`{value}`"
    return f"`{field.default}`" if field.default is not None else "—"


def recipe_json_schema() -> dict[str, object]:
    """The JSON Schema of a recipe (one model, or a family), for editors and for the committed recipes/recipe.schema.json."""
    schema = TypeAdapter(s.Recipe | f.FamilyRecipe).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "quant recipe"
    return schema


def recipes_markdown() -> str:
    lines = [
        "# Recipe reference",
        "",
        "Generated from `quant/recipe/schema.py` (`python -m quant.recipe.docs > docs/recipes.md`); a test fails when it is out of date.",
        "Unknown keys are errors. Relative paths resolve against the recipe's folder. A recipe may also say",
        "`extends: other.yaml` (deep merge, lists replace; `null` removes an inherited input, output or variant by name,",
        "a variant's `gates`, or a top-level section such as `gates`), `preset: avx2 | avx512_vnni | arm64` (per-method defaults; see",
        "`quant/presets/`), and `${env:VAR}` or `${env:VAR:-default}` anywhere in a string.",
        "",
        "## Metrics",
        "",
        "| metric | meaning | better |",
        "|---|---|---|",
        *[f"| `{m.name}` | {m.doc} | {'lower' if m.lower_is_better else 'higher'} |" for m in CATALOGUE.values() if m.gate],
        "",
    ]
    for title, model in SECTIONS:
        lines += [f"## {title}", "", (model.__doc__ or "").strip(), "", "| field | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            kind = _type_name(field.annotation).replace("|", "\\|")
            lines.append(f"| `{name}` | {kind} | {_default(field)} | {(field.description or '').replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(recipes_markdown(), end="")
