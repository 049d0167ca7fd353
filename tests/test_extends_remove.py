"""`extends` that can remove: a derived recipe drops an inherited output, variant or gates with `null`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quant.recipe.loader import load_recipe
from tests.conftest import REPO, run_cli, write_recipe


def _derived(workspace: dict[str, Path], remove: bool) -> dict[str, Any]:
    """The shipped rec recipe reused for another model (tiny.onnx) whose output has another name."""
    nulled = {"softmax_11.tmp_0": None} if remove else {}
    return {
        "extends": str(REPO / "recipes" / "edge-cpu.yaml"),
        "name": "tiny-family",
        "model": {"package": None, "path": str(workspace["model"])},
        "inputs": {"x": {"resize": {"mode": "height", "height": 8, "min_width": 16, "max_width": 64}}},
        "outputs": {**nulled, "probs": {"kind": "ctc", "charset_metadata": "character"}},
        "calibration": {"source": {"images": str(workspace["calib"]), "labels": None}, "samples": None},
        "evaluation": {"source": {"images": str(workspace["eval"]), "labels": None, "slices": None}, "samples": None},
        "tuning": None,  # the shipped tuning lines are for the shipped model; this family has no search
        "variants": {"int8-dynamic": None, "int8-static": None, "fp16": {"gates": None}} if remove else {},
        "gates": [{"metric": "ctc_exact_match", "min": 0.9}],
    }


def test_a_recipe_extends_a_shipped_one_and_removes_what_it_inherited(workspace: dict[str, Path]) -> None:
    path = write_recipe(workspace["root"], _derived(workspace, remove=True))
    recipe = load_recipe(str(path)).recipe
    assert list(recipe.outputs) == ["probs"]
    assert list(recipe.variants) == ["fp16"] and recipe.variants["fp16"].gates == []  # its size/latency gates went too
    assert recipe.inputs["x"].color == "BGR"  # what was not removed is still inherited
    done = run_cli("--recipe", str(path), "--validate", cwd=workspace["root"])
    assert done.returncode == 0, done.stderr


def test_without_removal_the_inherited_output_is_still_there(workspace: dict[str, Path]) -> None:
    path = write_recipe(workspace["root"], _derived(workspace, remove=False))
    assert "softmax_11.tmp_0" in load_recipe(str(path)).recipe.outputs
    done = run_cli("--recipe", str(path), "--validate", cwd=workspace["root"])
    assert done.returncode == 2 and "outputs.softmax_11.tmp_0" in done.stderr


def test_null_op_types_still_overrides_the_preset(workspace: dict[str, Path]) -> None:
    document = _derived(workspace, remove=True)
    document["variants"] = {"int8-static": None, "int8-dynamic": {"op_types": None}, "fp16": None}
    recipe = load_recipe(str(write_recipe(workspace["root"], document))).recipe
    assert list(recipe.variants) == ["int8-dynamic"] and recipe.variants["int8-dynamic"].op_types is None  # all op types, not avx2's [MatMul]
