"""Reading a recipe: safe YAML, `extends`, presets, `${env:VAR}`, then the typed schema."""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from quant.errors import RecipeError
from quant.recipe.family import FamilyRecipe, is_family_document
from quant.recipe.schema import Recipe

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_RECIPES = PACKAGE_ROOT.parent / "recipes"
PRESETS_DIR = PACKAGE_ROOT / "presets"
ENV_PATTERN = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


MAX_YAML_VALUES = 100_000  # a recipe has hundreds of values; more means an alias bomb ("billion laughs")


class _RecipeYamlError(yaml.YAMLError):
    """A YAML document that parses but must still be refused; carries the field it is about."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (plain data only: no Python tags, nothing runs) that also refuses duplicate
    mapping keys (safe_load silently keeps the last one), self-referencing aliases and alias bombs."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_tree(node)
        return super().construct_document(node)


def _check_tree(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}  # expanded size of each node, so shared (aliased) nodes are counted once per use
    open_nodes: set[int] = set()

    def visit(node: yaml.Node, field: str) -> int:
        if id(node) in open_nodes:
            raise _RecipeYamlError(f"an alias at line {node.start_mark.line + 1} refers to itself (a recursive structure)", field or None)
        if id(node) in sizes:
            return sizes[id(node)]
        open_nodes.add(id(node))
        size = 1
        if isinstance(node, yaml.MappingNode):
            first_seen: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    size += visit(value_node, field)
                    continue
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                child = f"{field}.{key}" if field else str(key)
                line = key_node.start_mark.line + 1
                if isinstance(key_node, yaml.ScalarNode):
                    if (key_node.tag, key) in first_seen:
                        raise _RecipeYamlError(
                            f"duplicate key '{key}' at line {line} (first at line {first_seen[(key_node.tag, key)]}); "
                            "YAML would silently keep the last one",
                            child,
                        )
                    first_seen[(key_node.tag, key)] = line
                size += visit(key_node, child) + visit(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                size += visit(item, f"{field}[{index}]")
        elif "\x00" in str(node.value):  # never valid in a path or a name; os calls raise on it
            raise _RecipeYamlError(f"a NUL character (line {node.start_mark.line + 1}) is not allowed", field or None)
        open_nodes.discard(id(node))
        sizes[id(node)] = size
        if size > MAX_YAML_VALUES:
            raise _RecipeYamlError(f"the document expands to more than {MAX_YAML_VALUES} values (an alias bomb?)", field or None)
        return size

    visit(root, "")


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe with where it came from."""

    recipe: Recipe | FamilyRecipe  # FamilyRecipe: a recipe with a `family` section (several parts) instead of `model`
    path: Path
    base_dir: Path
    resolved: dict[str, Any]  # the merged document that was validated, for lock files and hashes


def find_recipe(name_or_path: str) -> Path:
    """A path as given, else a bare name looked up in ./recipes and the shipped recipes folder."""
    given = Path(name_or_path).expanduser()
    candidates = [given]
    if not given.is_absolute() and len(given.parts) == 1:
        for folder in (Path.cwd() / "recipes", BUNDLED_RECIPES):
            candidates += [folder / given.name, folder / f"{given.name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise RecipeError("recipe file not found (a bare name is also looked up in recipes/)", file=str(name_or_path))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"cannot read: {error}", file=str(path)) from None
    try:
        # A safe loader: a recipe is data and must never construct Python objects.
        document = yaml.load(text, Loader=RecipeLoader)
    except _RecipeYamlError as error:
        raise RecipeError(error.message, file=str(path), field=error.field) from None
    except RecursionError:
        raise RecipeError("the YAML is nested too deeply", file=str(path)) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError(f"YAML syntax error{where}: {problem}", file=str(path)) from None
    if document is None:
        raise RecipeError("the recipe is empty", file=str(path))
    if not isinstance(document, dict):
        raise RecipeError(f"a recipe must be a mapping, not {type(document).__name__}", file=str(path))
    return document


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; lists and scalars in `override` replace."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _substitute_env(node: Any, path: Path, field: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _substitute_env(v, path, f"{field}.{k}" if field else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, path, f"{field}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise RecipeError(f"environment variable {name} is not set (write ${{env:{name}:-default}} for a default)", file=str(path), field=field)

        return ENV_PATTERN.sub(replace, node)
    return node


def _allowed(target: Path, roots: list[Path]) -> bool:
    return any(target == root or root in target.parents for root in roots)


def _load_document(path: Path, chain: tuple[Path, ...], extra_roots: list[Path]) -> tuple[dict[str, Any], Path]:
    """The recipe at `path` with its `extends` chain merged underneath it, and its base folder."""
    if path in chain:
        loop = " -> ".join(str(p) for p in (*chain, path))
        raise RecipeError(f"extends loop: {loop}", file=str(chain[0]), field="extends")
    document = _read_yaml(path)
    parent_ref = document.pop("extends", None)
    if parent_ref is None:
        return document, path.parent
    if not isinstance(parent_ref, str):
        raise RecipeError("'extends' must be a path to another recipe", file=str(path), field="extends")
    parent = (path.parent / parent_ref).resolve() if not Path(parent_ref).is_absolute() else Path(parent_ref).resolve()
    # A recipe may extend recipes in its own folder tree or the shipped ones; anything else must be allowed explicitly.
    roots = [path.parent.resolve(), BUNDLED_RECIPES.resolve(), *extra_roots]
    if not _allowed(parent, roots):
        raise RecipeError(
            f"extends '{parent_ref}' points outside the recipe's folder and the shipped recipes (allow it with --allow-extends-from)",
            file=str(path),
            field="extends",
        )
    if not parent.is_file():
        raise RecipeError(f"extended recipe '{parent_ref}' not found", file=str(path), field="extends")
    base, _ = _load_document(parent, (*chain, path), extra_roots)
    base = rebase_paths(base, parent.parent, path.parent)
    return deep_merge(base, document), path.parent


def rebase_paths(document: dict[str, Any], from_dir: Path, to_dir: Path) -> dict[str, Any]:
    """Paths in an extended recipe stay relative to *its* folder, whoever extends it."""
    rebased = copy.deepcopy(document)
    if from_dir.resolve() == to_dir.resolve():
        return rebased

    def fix(section: Any, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str) and not Path(section[key]).is_absolute():
            section[key] = os.path.relpath((from_dir / section[key]).resolve(), to_dir.resolve())

    model = rebased.get("model")
    if isinstance(model, dict) and not model.get("package"):
        fix(model, "path")
    fix(rebased.get("family"), "folder")
    for set_name in ("calibration", "evaluation", "tuning"):
        data = rebased.get(set_name)
        if isinstance(data, dict) and isinstance(data.get("source"), dict):
            for key in ("images", "labels", "dataset", "npz"):
                if key == "labels":
                    continue  # labels are relative to the images folder
                fix(data["source"], key)
    fix(rebased.get("promotion"), "to")
    outputs = rebased.get("outputs")
    for spec in outputs.values() if isinstance(outputs, dict) else ():
        if isinstance(spec, dict) and not spec.get("charset_package"):  # a path inside a package stays as it is
            fix(spec, "charset_file")
    return rebased


NAMED_SECTIONS = ("inputs", "outputs", "variants")


def remove_nulled(document: dict[str, Any]) -> dict[str, Any]:
    """`null` removes what a recipe inherited (from `extends`): an input, output or variant by name, a
    variant's `gates`, or a whole top-level section (e.g. `gates: null`). Elsewhere null stays a value:
    `op_types: null` in a variant must still override a preset's op types."""
    kept = {key: value for key, value in document.items() if value is not None}
    for section in NAMED_SECTIONS:
        if isinstance(kept.get(section), dict):
            kept[section] = {name: entry for name, entry in kept[section].items() if entry is not None}
    variants = kept.get("variants")
    for name, variant in variants.items() if isinstance(variants, dict) else ():
        if isinstance(variant, dict) and "gates" in variant and variant["gates"] is None:
            kept["variants"][name] = {key: value for key, value in variant.items() if key != "gates"}
    return kept


def _apply_preset(document: dict[str, Any], path: Path) -> dict[str, Any]:
    """A preset gives per-method defaults; a variant's own fields win."""
    preset_name = document.pop("preset", None)
    if preset_name is None:
        return document
    if not isinstance(preset_name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", preset_name):
        raise RecipeError("'preset' must be a preset name", file=str(path), field="preset")
    preset_file = PRESETS_DIR / f"{preset_name}.yaml"
    if not preset_file.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise RecipeError(f"unknown preset '{preset_name}'; known presets: {known}", file=str(path), field="preset")
    defaults = _read_yaml(preset_file)
    variants = document.get("variants")
    if isinstance(variants, dict):
        for name, variant in variants.items():
            if isinstance(variant, dict) and isinstance(defaults.get(variant.get("method")), dict):
                variants[name] = deep_merge(defaults[variant["method"]], variant)
    return document


def _is_union_tag(node: dict[str, Any], item: Any, following: Any) -> bool:
    """Pydantic inserts the chosen union member's tag into error locations; the user never wrote it."""
    if any(node.get(key) == item for key in ("method", "mode", "kind")):
        return True
    return following is not None and following in node and not isinstance(node.get(item), (dict, list))


def _field_path(loc: tuple[Any, ...], document: Any) -> str:
    """Pydantic's error location as the user wrote it: union tags that pydantic inserts are dropped."""
    parts: list[str] = []
    node = document
    for index, item in enumerate(loc):
        following = loc[index + 1] if index + 1 < len(loc) else None
        if isinstance(node, dict) and _is_union_tag(node, item, following):
            continue
        if isinstance(node, dict) and item in node:
            node = node[item]
            parts.append(str(item))
        elif isinstance(node, list) and isinstance(item, int):
            node = node[item] if item < len(node) else None
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
            node = None
    return ".".join(parts)


def validation_error(error: ValidationError, document: dict[str, Any], path: Path) -> RecipeError:
    first = error.errors()[0]
    field = _field_path(tuple(first["loc"]), document)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (not in the schema)"
    elif first["type"] == "missing":
        message = "required field is missing"
    if "input" in first and first["type"] not in ("missing", "extra_forbidden") and not isinstance(first["input"], (dict, list)):
        message += f" (got {first['input']!r})"
    more = len(error.errors()) - 1
    if more:
        message += f" (+{more} more problem{'s' if more > 1 else ''})"
    return RecipeError(message, file=str(path), field=field or None)


def load_recipe(name_or_path: str, *, allow_extends_from: list[Path] | None = None) -> LoadedRecipe:
    """Find, read, merge and validate a recipe."""
    path = find_recipe(name_or_path)
    document, base_dir = _load_document(path, (), [p.resolve() for p in allow_extends_from or []])
    document = _substitute_env(document, path)
    document = remove_nulled(_apply_preset(document, path))
    schema: type[Recipe | FamilyRecipe] = FamilyRecipe if is_family_document(document) else Recipe
    try:
        recipe = schema.model_validate(document)
    except ValidationError as error:
        raise validation_error(error, document, path) from None
    return LoadedRecipe(recipe=recipe, path=path, base_dir=base_dir, resolved=document)
