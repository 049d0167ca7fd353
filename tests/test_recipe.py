"""Recipe loading: schema errors name the file and field; extends, presets and env substitution."""

from __future__ import annotations

from pathlib import Path

import pytest

from quant.errors import RecipeError
from quant.recipe.loader import BUNDLED_RECIPES, load_recipe
from quant.recipe.schema import ResizeToHeight, StaticInt8Options
from tests.conftest import base_recipe, write_recipe


def recipe_file(workspace: dict[str, Path], **overrides: object) -> Path:
    return write_recipe(workspace["root"], base_recipe(workspace["model"], workspace["calib"], workspace["eval"], **overrides))


def error_of(path: Path) -> RecipeError:
    with pytest.raises(RecipeError) as caught:
        load_recipe(str(path))
    return caught.value


def test_valid_recipe_loads_with_typed_fields(workspace: dict[str, Path]) -> None:
    loaded = load_recipe(str(recipe_file(workspace, variants={"s": {"method": "static_int8", "calibrate": "entropy"}})))
    variant = loaded.recipe.variants["s"]
    assert isinstance(variant, StaticInt8Options)
    assert variant.calibrate == "entropy"
    assert isinstance(loaded.recipe.inputs["x"].resize, ResizeToHeight)
    assert loaded.recipe.inputs["x"].scale == pytest.approx(1 / 255)
    assert loaded.base_dir == workspace["root"]


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"variants": {"s": {"method": "static_int8", "calibrate": "bogus"}}}, "variants.s.calibrate", "minmax"),
        ({"variants": {"s": {"method": "nope"}}}, "variants.s", "fp16, dynamic_int8, static_int8, inc"),
        ({"variants": {"s": {"method": "fp16", "keep_io_type": True}}}, "variants.s.keep_io_type", "unknown key"),
        ({"variants": {"s": {"method": "static_int8", "per_channel": "often"}}}, "variants.s.per_channel", "boolean"),
        ({"gates": [{"metric": "accuracy", "min": 1}]}, "gates[0].metric", "unknown metric"),
        ({"gates": [{"metric": "cosine"}]}, "gates[0]", "needs 'min', 'max' or 'max_regression'"),
        ({"bench": {"rounds": 1}}, "bench.rounds", "greater than or equal to 3"),
        ({"evaluation": {"source": {"images": "x", "labelz": "y"}}}, "evaluation.source.labelz", "unknown key"),
        ({"name": "has space"}, "name", "pattern"),
        ({"variants": {}}, "variants", "at least one variant"),
        ({"inputs": {"x": {"resize": {"mode": "height", "height": 8, "min_width": 100, "max_width": 10}}}}, "inputs.x.resize", "min_width"),
        ({"inputs": {"x": {"resize": {"height": 8}, "scale": "1/0"}}}, "inputs.x.scale", "fraction"),
    ],
)
def test_schema_errors_name_file_and_field(workspace: dict[str, Path], overrides: dict[str, object], field: str, words: str) -> None:
    path = recipe_file(workspace, **overrides)
    error = error_of(path)
    assert error.file == str(path)
    assert error.field == field
    assert words in str(error)
    assert "\n" not in str(error)


def test_missing_required_field(workspace: dict[str, Path]) -> None:
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"])
    del recipe["evaluation"]
    error = error_of(write_recipe(workspace["root"], recipe))
    assert error.field == "evaluation" and "required" in str(error)


def test_static_variant_without_calibration_is_refused(workspace: dict[str, Path]) -> None:
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants={"s": {"method": "static_int8"}})
    del recipe["calibration"]
    assert "need a 'calibration'" in str(error_of(write_recipe(workspace["root"], recipe)))


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nvariants: [unclosed\n")
    error = error_of(path)
    assert "YAML syntax error at line" in str(error)


def test_yaml_cannot_construct_python_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    assert "YAML" in str(error_of(path))


def test_not_a_mapping_and_empty(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "empty.yaml").write_text("")
    assert "must be a mapping" in str(error_of(tmp_path / "list.yaml"))
    assert "empty" in str(error_of(tmp_path / "empty.yaml"))


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(str(tmp_path / "nope.yaml"))


def test_bare_name_resolves_against_shipped_recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = load_recipe("edge-cpu.yaml")
    assert loaded.path == (BUNDLED_RECIPES / "edge-cpu.yaml").resolve()


def test_extends_deep_merges_and_lists_replace(workspace: dict[str, Path]) -> None:
    base = recipe_file(workspace, variants={"a": {"method": "fp16"}, "b": {"method": "dynamic_int8"}})
    child = workspace["root"] / "child.yaml"
    child.write_text(
        f"extends: {base.name}\nname: child\nvariants:\n  b: {{method: dynamic_int8, per_channel: true}}\ngates:\n  - {{metric: snr_db, min: 10}}\n"
    )
    loaded = load_recipe(str(child))
    assert loaded.recipe.name == "child"
    assert set(loaded.recipe.variants) == {"a", "b"}
    assert loaded.recipe.variants["b"].per_channel is True
    assert [g.metric for g in loaded.recipe.gates] == ["snr_db"]


def test_extends_loop_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    error = error_of(tmp_path / "a.yaml")
    assert error.field == "extends" and "loop" in str(error)


def test_extends_outside_allowed_folders_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    inside = tmp_path / "project"
    outside.mkdir()
    inside.mkdir()
    (outside / "base.yaml").write_text("name: base\n")
    (inside / "r.yaml").write_text("extends: ../outside/base.yaml\nname: r\n")
    assert "outside" in str(error_of(inside / "r.yaml"))
    with pytest.raises(RecipeError) as allowed:  # allowed now, so it fails later on the schema instead
        load_recipe(str(inside / "r.yaml"), allow_extends_from=[outside])
    assert "extends" not in (allowed.value.field or "")


def test_extended_paths_stay_relative_to_their_own_folder(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    shared = root / "shared"
    shared.mkdir()
    base = base_recipe(Path("../tiny.onnx"), Path("../calib"), Path("../eval"), tuning={"source": {"images": "../tune"}})
    write_recipe(shared, base, "base.yaml")
    (root / "child.yaml").write_text("extends: shared/base.yaml\nname: child\n")
    loaded = load_recipe(str(root / "child.yaml"))
    assert (loaded.base_dir / loaded.recipe.model.path).resolve() == workspace["model"].resolve()
    assert (loaded.base_dir / loaded.recipe.evaluation.source.images).resolve() == workspace["eval"].resolve()
    assert loaded.recipe.tuning is not None and (loaded.base_dir / loaded.recipe.tuning.source.images).resolve() == (root / "tune").resolve()


def test_env_substitution_and_default(workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANT_TEST_NAME", "from-env")
    path = recipe_file(workspace, name="${env:QUANT_TEST_NAME}", description="${env:QUANT_UNSET_VAR:-fallback}")
    loaded = load_recipe(str(path))
    assert loaded.recipe.name == "from-env"
    assert loaded.recipe.description == "fallback"
    monkeypatch.delenv("QUANT_TEST_NAME")
    error = error_of(path)
    assert error.field == "name" and "QUANT_TEST_NAME" in str(error)


def test_preset_sets_defaults_and_variant_fields_win(workspace: dict[str, Path]) -> None:
    path = recipe_file(workspace, preset="avx2", variants={"s": {"method": "static_int8", "reduce_range": False}, "d": {"method": "dynamic_int8"}})
    loaded = load_recipe(str(path))
    static = loaded.recipe.variants["s"]
    assert static.activation_type == "uint8" and static.op_types == ["Conv", "MatMul"]
    assert static.reduce_range is False  # the variant's own value wins over the preset's
    assert loaded.recipe.variants["d"].op_types == ["MatMul"]


def test_unknown_preset(workspace: dict[str, Path]) -> None:
    error = error_of(recipe_file(workspace, preset="z80"))
    assert error.field == "preset" and "avx2" in str(error)
