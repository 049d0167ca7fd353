"""The fallback search's promises: when no attempt passes, the variant is the attempt that failed the
fewest gates with the fewest nodes in float (not the last one tried) and the report says it failed;
no search when only speed or size fail; it stops once accuracy holds and only speed or size fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest

from quant.gates import GateResult
from quant.outcome import VariantOutcome
from quant.search import _choose, default_steps
from tests.conftest import base_recipe, run_cli, tiny_ctc_model, write_recipe

# conv1 of the outlier model collapses under per-tensor INT8; keeping it in float restores the text.
BROKEN_INT8 = {"method": "static_int8", "per_channel": False, "op_types": ["Conv", "MatMul"], "fallback": {"max_nodes": 2, "samples": 4}}



def _recipe(workspace: dict[str, Path], **overrides: Any) -> dict[str, Any]:
    """The tiny workspace's recipe with its tuning split: what every search chooses on."""
    tuning = {"source": {"images": str(workspace["tune"])}}
    return base_recipe(workspace["model"], workspace["calib"], workspace["eval"], tuning=tuning, **overrides)

def _trial(status: str, failed: int, passed: int = 1) -> VariantOutcome:
    gates = [GateResult("cosine", None, 0.9, None, 0.5, False) for _ in range(failed)]
    gates += [GateResult("max_abs", None, None, 1.0, 0.1, True) for _ in range(passed)]
    return VariantOutcome(name="v", method="static_int8", options={}, status=status, gates=gates)  # type: ignore[arg-type]


def test_default_steps_double_up_to_the_limit() -> None:
    assert default_steps(16) == [1, 2, 4, 8, 16]
    assert default_steps(5) == [1, 2, 4, 5]
    assert default_steps(1) == [1]


@pytest.mark.parametrize(
    ("attempts", "chosen"),
    [
        ([("failed", 2, 0), ("passed", 0, 2), ("passed", 0, 4)], 1),  # the first that passed, not a later one
        ([("failed", 2, 0), ("failed", 1, 1), ("failed", 1, 2)], 1),  # fewest failed gates, then fewest nodes in float
        ([("failed", 1, 0), ("failed", 2, 1), ("failed", 2, 2)], 0),  # the first can be the best
        ([("failed", 3, 0), ("error", 0, 1), ("failed", 2, 2)], 2),  # a build error is worse than any judged failure
        ([("error", 0, 0), ("nothing_quantized", 0, 1)], 0),  # an FP32 copy only when every attempt was one
    ],
)
def test_the_attempt_chosen(attempts: list[tuple[str, int, int]], chosen: int) -> None:
    judged = [(_trial(status, failed), [f"n{i}" for i in range(nodes)]) for status, failed, nodes in attempts]
    index, why = _choose(judged)
    assert index == chosen, why
    assert ("no attempt passed" in why) is (attempts[chosen][0] == "failed")


def _search(workspace: dict[str, Path], gates: list[dict], broken: bool = True, variant: dict[str, Any] = BROKEN_INT8) -> tuple[int, dict, str]:
    root = workspace["root"]
    if broken:
        onnx.save(tiny_ctc_model(weight_outlier=True), str(workspace["model"]))
    path = write_recipe(root, _recipe(workspace, variants={"int8": variant}, gates=gates))
    done = run_cli("--recipe", str(path), "--out", str(root / "run"), cwd=root)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads((root / "run" / "results.json").read_text())["variants"]["int8"], done.stdout + done.stderr


def test_when_no_attempt_passes_the_best_is_kept_and_the_report_says_it_failed(workspace: dict[str, Path]) -> None:
    # max_abs <= 0 holds only for an unquantized model: with at most 2 of 3 nodes in float, no attempt passes.
    # Steps beyond max_nodes are cut to it, and a number of nodes already tried is not built and judged again.
    steps = {**BROKEN_INT8, "fallback": {**BROKEN_INT8["fallback"], "steps": [1, 4, 2]}}
    gates = [{"metric": "ctc_exact_match", "min": 0.9}, {"metric": "max_abs", "max": 0.0}]
    code, variant, output = _search(workspace, gates, variant=steps)
    search = variant["search"]
    assert [a["nodes_in_float"] for a in search["attempts"]] == [0, 1, 2]
    assert len(search["ranked_on"]) == 4  # the ranking reads fallback.samples (BROKEN_INT8: 4) of the 10 tuning images
    assert search["objective"] == "ctc_exact_match"  # none in the recipe: the first accuracy gate its own setting failed
    assert [len(a["failed_gates"]) for a in search["attempts"]] == [2, 1, 1]
    # Attempts 1 and 2 both fail one gate: the one with fewer nodes in float is kept, not the last.
    assert search["chosen_attempt"] == 1 and search["chosen_nodes_in_float"] == 1
    assert search["attempts"][1]["excluded"] == ["conv1"]
    # Each attempt records the headline metrics the report draws as the search's curve.
    assert "ctc_exact_match" in search["metrics"] and all(m in a for a in search["attempts"] for m in search["metrics"])
    assert search["attempts"][1]["ctc_exact_match"] >= 0.9 > search["attempts"][0]["ctc_exact_match"]
    assert "no attempt passed within 2" in search["conclusion"] and "kept 1 node(s) in float" in search["conclusion"]
    assert code == 1 and variant["status"] == "failed" and [g["metric"] for g in variant["gates"] if not g["passed"]] == ["max_abs"]
    assert "| int8 | static_int8 | FAIL |" in output
    root = workspace["root"]
    assert (root / "run" / "variants" / "int8.onnx").read_bytes() == (root / "run" / "work" / "int8" / "attempt-001.onnx").read_bytes()
    assert not (root / "releases").exists()


def test_no_search_when_only_size_fails(workspace: dict[str, Path]) -> None:
    code, variant, output = _search(workspace, [{"metric": "cosine", "min": 0.9}, {"metric": "size_ratio", "max": 0.01}], broken=False)
    search = variant["search"]
    assert code == 1 and len(search["attempts"]) == 1 and search["sensitivity"] == []
    assert search["conclusion"].startswith("only speed/size gates failed")
    assert "ranked" not in output  # the sensitivity ranking never ran


def test_the_search_stops_once_accuracy_holds_and_only_size_fails(workspace: dict[str, Path]) -> None:
    code, variant, _ = _search(workspace, [{"metric": "ctc_exact_match", "min": 0.9}, {"metric": "size_ratio", "max": 0.01}])
    search = variant["search"]
    assert code == 1 and [a["nodes_in_float"] for a in search["attempts"]] == [0, 1]  # 2 nodes never tried
    assert search["conclusion"].startswith("accuracy held with 1 node(s) in float, but size_ratio failed")
    assert search["chosen_nodes_in_float"] == 1 and search["sensitivity"][0]["node"] == "conv1"


def test_a_first_attempt_that_cannot_be_built_is_not_searched(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    onnx.save(tiny_ctc_model(weight_outlier=True), str(workspace["model"]))
    path = write_recipe(root, _recipe(workspace, variants={"int8": BROKEN_INT8}))
    # The stand-in bug strikes inside calibration, in the build process: the variant errors, the run goes on.
    done = run_cli("--recipe", str(path), "--out", str(root / "run"), cwd=root, env={"QUANT_TEST_FAIL_AT": "calibration"})
    variant = json.loads((root / "run" / "results.json").read_text())["variants"]["int8"]
    assert done.returncode == 1 and variant["status"] == "error" and "InjectedFailure" in variant["error"]
    search = variant["search"]
    assert len(search["attempts"]) == 1 and search["sensitivity"] == [] and "ranked" not in done.stderr
    assert search["chosen_because"].startswith("every attempt that quantized anything failed to build or run")
    assert search["conclusion"].startswith("the build without any node in float failed, so there is nothing to rank; no search")


def test_a_qoperator_variant_is_ranked_on_a_qdq_build_of_itself(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    onnx.save(tiny_ctc_model(weight_outlier=True), str(workspace["model"]))
    variants = {"int8": {**BROKEN_INT8, "format": "QOperator"}}
    gates = [{"metric": "ctc_exact_match", "min": 0.9}]
    path = write_recipe(root, _recipe(workspace, variants=variants, gates=gates))
    done = run_cli("--recipe", str(path), "--out", str(root / "run"), cwd=root)
    assert done.returncode == 0, done.stderr
    search = json.loads((root / "run" / "results.json").read_text())["variants"]["int8"]["search"]
    assert (root / "run" / "work" / "int8" / "ranking-qdq.onnx").is_file()  # QLinear ops have no Q/DQ pairs to compare
    assert search["sensitivity"][0]["node"] == "conv1" and search["chosen_nodes_in_float"] == 1
    assert "QLinearMatMul" in {n.op_type for n in onnx.load(str(root / "run" / "variants" / "int8.onnx")).graph.node}


def test_a_first_attempt_that_passes_ends_the_search_and_says_so(workspace: dict[str, Path]) -> None:
    code, variant, output = _search(workspace, [{"metric": "cosine", "min": 0.9}], broken=False)
    search = variant["search"]
    assert code == 0 and variant["status"] == "passed" and len(search["attempts"]) == 1 and search["sensitivity"] == []
    assert search["conclusion"] == "passed without keeping any node in float" and "ranked" not in output


def test_the_search_stops_when_keeping_more_nodes_in_float_leaves_nothing_quantized(workspace: dict[str, Path]) -> None:
    # The outlier model has 3 quantizable nodes: with all 3 in float the attempt is an FP32 copy, never the variant.
    every_node = {**BROKEN_INT8, "fallback": {**BROKEN_INT8["fallback"], "max_nodes": 3, "steps": [3, 1]}}
    code, variant, _ = _search(workspace, [{"metric": "ctc_exact_match", "min": 0.9}, {"metric": "max_abs", "max": 0.0}], variant=every_node)
    search = variant["search"]
    assert [(a["nodes_in_float"], a["status"]) for a in search["attempts"]] == [(0, "failed"), (3, "nothing_quantized")]  # 1 never tried
    assert search["conclusion"].startswith("with 3 node(s) in float nothing was quantized any more; an FP32 copy is not an INT8 variant")
    assert code == 1 and variant["status"] == "failed" and search["chosen_nodes_in_float"] == 0
