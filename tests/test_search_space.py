"""The search beyond "which nodes stay float": per-tensor overrides reach the built graph, candidate settings
are judged on the tuning split before any node goes to float, 8-bit weights are tried only where the CPU's
flags say u8 x s8 cannot saturate, a passing attempt steps back, pairs record their interaction, and the
report shows the trade-off curve of every attempt with the split it was judged on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from quant.machine import cpu_facts, eight_bit_weights_unsafe
from quant.recipe.schema import Recipe
from quant.report.tradeoff import pareto
from tests.conftest import base_recipe, run_cli, tiny_ctc_model, write_images, write_recipe

# Per-tensor INT8 collapses conv1 of the outlier model; keeping conv1 in float restores the text.
BROKEN = {"method": "static_int8", "per_channel": False, "op_types": ["Conv", "MatMul"]}
TEXT_GATE = [{"metric": "ctc_exact_match", "min": 0.9}]


def _tuned_recipe(workspace: dict[str, Path], variants: dict, gates: list[dict] | None = None) -> dict:
    tuning = {"source": {"images": str(workspace["tune"])}}
    return base_recipe(workspace["model"], workspace["calib"], workspace["eval"], tuning=tuning, variants=variants, gates=gates or TEXT_GATE)


def _one_run(root: Path, outlier: bool, variants: dict) -> dict:
    """One CLI run of several variants on a tiny workspace (FP32 once for all): the run folder and its results."""
    workspace = {"root": root, "model": root / "tiny.onnx", "calib": root / "calib", "eval": root / "eval", "tune": root / "tune"}
    write_images(workspace["calib"], 12, seed=1, prefix="c")
    write_images(workspace["eval"], 10, seed=2, prefix="e")
    write_images(workspace["tune"], 10, seed=3, prefix="t")
    onnx.save(tiny_ctc_model(weight_outlier=outlier), str(workspace["model"]))
    done = run_cli("--recipe", str(write_recipe(root, _tuned_recipe(workspace, variants))), "--out", str(root / "run"), cwd=root)
    assert done.returncode in (0, 1), done.stderr
    results = json.loads((root / "run" / "results.json").read_text())
    return {"run": root / "run", "variants": results["variants"], "data": results["data"]}


SEVEN_BIT = {"method": "static_int8", "op_types": ["Conv", "MatMul"], "reduce_range": True, "calibrate": "minmax"}
# Ranges at the 20th percentile clip almost every activation: no text survives, whatever stays in float.
CLIPPED = {"method": "static_int8", "calibrate": "percentile", "percentile": 20, "op_types": ["Conv", "MatMul"]}
CANDIDATES = [{"reduce_range": False}, {"calibrate": "minmax"}]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _one_run(
        tmp_path_factory.mktemp("plain"),
        outlier=False,
        variants={
            "w7": SEVEN_BIT,
            "override": {**SEVEN_BIT, "tensor_overrides": {"w1": {"reduce_range": False}, "r1": {"calibrate": "percentile", "percentile": 90}}},
            "unknown": {**SEVEN_BIT, "tensor_overrides": {"no_such_tensor": {"reduce_range": False}}},
            "int8": {**CLIPPED, "fallback": {"max_nodes": 2, "samples": 4, "candidates": CANDIDATES, "objective": "ctc_exact_match"}},
        },
    )


FALLBACK = {"max_nodes": 2, "samples": 4, "steps": [2], "objective": "ctc_exact_match"}
# The recipe already calibrates conv1's input the way the sensitive overrides would: for the top node they change
# nothing, so that count is not attempted (the build would be the recipe's own again).
NOTHING_NEW = {"nodes": [1], "weights_reduce_range": None, "inputs_calibrate": "minmax"}
STEPS = {**BROKEN, "tensor_overrides": {"x": {"calibrate": "minmax"}}, "fallback": {**FALLBACK, "sensitive_overrides": NOTHING_NEW}}


@pytest.fixture(scope="module")
def outlier_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _one_run(
        tmp_path_factory.mktemp("outlier"),
        outlier=True,
        variants={"pairs": {**BROKEN, "fallback": {**FALLBACK, "pairs": 2}}, "steps": STEPS},
    )


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_tensor_overrides_change_the_built_graph(plain_run: dict) -> None:
    root = plain_run["run"].parent
    plain, changed = _initializers(root / "run" / "variants" / "w7.onnx"), _initializers(root / "run" / "variants" / "override.onnx")
    # 7-bit weights stay within [-64, 64]; the override gives conv1 the full 8-bit range, and conv2 keeps 7 bits.
    assert np.abs(plain["w1_quantized"].astype(int)).max() <= 64 < np.abs(changed["w1_quantized"].astype(int)).max()
    assert np.abs(changed["w2_quantized"].astype(int)).max() <= 64
    # r1's range comes from its 90th percentile instead of its maximum: a finer scale.
    assert changed["r1_scale"] < 0.9 * plain["r1_scale"]
    variants_json = plain_run["variants"]
    assert variants_json["override"]["build"]["tensor_overrides"]["w1"] == [{"reduce_range": False}]
    assert variants_json["unknown"]["status"] == "error" and "no_such_tensor" in variants_json["unknown"]["error"]


def test_a_tensor_override_must_say_something_and_know_its_keys() -> None:
    recipe = {"name": "r", "model": {"path": "m.onnx"}, "evaluation": {"source": {"images": "e"}}, "variants": {}}
    for bad in ({}, {"percentile": 99.0}, {"reduce_range": False, "bits": 8}):
        with pytest.raises(ValueError):
            Recipe.model_validate(recipe | {"variants": {"v": {"method": "static_int8", "tensor_overrides": {"t": bad}}}})


def test_eight_bit_weights_only_where_the_cpu_flags_rule_out_saturation(tmp_path: Path) -> None:
    def facts(flags: str):  # a /proc/cpuinfo as this machine, an AVX2-only CPU and a VNNI one would write it
        info = tmp_path / f"cpuinfo-{len(flags)}"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        return cpu_facts.__wrapped__(info)

    avx2, vnni = facts("fpu sse2 avx avx2 fma"), facts("fpu sse2 avx avx2 avx512f avx512_vnni")
    if avx2.x86:
        assert "without VNNI" in (eight_bit_weights_unsafe("uint8", "int8", avx2) or "")
        assert eight_bit_weights_unsafe("uint8", "int8", vnni) is None and vnni.vnni == ["avx512_vnni"]
        assert eight_bit_weights_unsafe("int8", "int8", avx2) is None  # s8 x s8 does not take the pairwise int16 path
    else:
        assert eight_bit_weights_unsafe("uint8", "int8", avx2) is None


def test_a_candidate_setting_is_tried_on_the_tuning_split_before_any_node_goes_to_float(plain_run: dict) -> None:
    variant, search = plain_run["variants"]["int8"], plain_run["variants"]["int8"]["search"]
    tried = [a["changes"] for a in search["attempts"]]
    # 8-bit weights are tried only where the CPU flags allow them; skipped elsewhere, with the fact named.
    if eight_bit_weights_unsafe("uint8", "int8") is None:
        assert tried == [{}, {"reduce_range": False}, {"calibrate": "minmax"}] and not search["skipped"]
    else:
        assert tried == [{}, {"calibrate": "minmax"}] and "VNNI" in search["skipped"][0]["skipped"]
    assert search["machine"]["vnni_flags"] == cpu_facts().vnni
    # Min/max ranges fix the model with no node in float; every attempt was judged on the tuning split,
    # the verdict on the evaluation split.
    assert search["attempts"][0]["ctc_exact_match"] < 0.9 <= search["attempts"][-1]["ctc_exact_match"]
    assert search["chosen_changes"] == {"calibrate": "minmax"} and search["chosen_nodes_in_float"] == 0
    assert {a["split"] for a in search["attempts"]} == {"tuning"} and all(a["nodes_in_float"] == 0 for a in search["attempts"])
    assert variant["judged_on"] == "evaluation" and search["verified"]["split"] == "evaluation"
    assert variant["build"]["quantized_ops"]  # the chosen build is a quantized graph
    # The lock file rebuilds the choice without searching: the setting it changed and no fallback.
    lock = yaml.safe_load((plain_run["run"] / "recipe.lock.yaml").read_text())["variants"]["int8"]
    assert lock["calibrate"] == "minmax" and "fallback" not in lock and lock["exclude_nodes"] == []
    # The trade-off curve: each attempt with its split in summary.md, and its figure in report.html.
    summary = (plain_run["run"] / "summary.md").read_text()
    assert "Trade-off of int8's search" in summary and f"| {len(tried) - 1} | tuning | settings | calibrate=minmax |" in summary
    assert "→ verified | evaluation |" in summary
    assert "Trade-off curve of int8" in (plain_run["run"] / "report.html").read_text()


def test_pairs_record_their_interaction(outlier_run: dict) -> None:
    search = outlier_run["variants"]["pairs"]["search"]
    stages = [a["stage"] for a in search["attempts"]]
    assert stages == ["settings", "pairs", "pairs", "pairs"]  # two singles and their pair; conv1 alone passes
    (pair,) = search["interactions"]
    assert pair["units"][0] == ["conv1"] and pair["together"] is not None
    assert pair["interaction"] == pytest.approx(pair["together"] - (pair["alone"][0] + pair["alone"][1] - search["attempts"][0]["ctc_exact_match"]))
    assert search["chosen_nodes_in_float"] == 1 and search["attempts"][search["chosen_attempt"]]["excluded"] == ["conv1"]
    # Every attempt of every stage was judged on the tuning split, and the ranking read tuning samples only.
    assert {a["split"] for a in search["attempts"]} == {"tuning"} and search["verified"]["split"] == "evaluation"
    tuning_ids = {s["id"] for s in outlier_run["data"]["tuning"]["samples"]}
    evaluation_ids = {s["id"] for s in outlier_run["data"]["evaluation"]["samples"]}
    assert search["ranked_on"] and set(search["ranked_on"]) <= tuning_ids and not set(search["ranked_on"]) & evaluation_ids


def test_a_pass_steps_back_to_fewer_nodes_in_float(outlier_run: dict) -> None:
    # 2 nodes in float pass; the step back returns the less sensitive one to INT8 and it still passes. Sensitive
    # overrides that change nothing for the top node (STEPS) are not an attempt: no "overrides" stage below.
    search = outlier_run["variants"]["steps"]["search"]
    assert search["sensitivity"][0]["node"] == "conv1"  # the top node, whose input the recipe already overrides
    assert [(a["stage"], a["nodes_in_float"], a["passed"]) for a in search["attempts"]] == [
        ("settings", 0, False), ("float", 2, True), ("step_back", 1, True)
    ]  # fmt: skip
    assert search["chosen_attempt"] == 2 and search["attempts"][2]["excluded"] == ["conv1"]
    assert "stepping back returned 1 unit(s)" in search["conclusion"]


def test_the_pareto_front_keeps_only_attempts_nothing_beats_on_both_axes() -> None:
    # (latency, badness): 1 is beaten by 0 on both axes; 3 ties 2 on latency but is worse.
    assert pareto([(0.7, 0.2), (0.8, 0.3), (0.9, 0.1), (0.9, 0.15), (1.0, 0.1)]) == [0, 2]


def test_the_step_back_bisects_to_the_fewest_units_that_still_pass() -> None:
    from quant.outcome import VariantOutcome
    from quant.recipe.schema import StaticInt8Options
    from quant.search import _Attempts, _step_back

    units = [[f"n{i}"] for i in range(16)]
    needed = {"n0", "n1", "n2"}  # passes only while these three stay in float
    done = _Attempts([], [], [])

    def attempt(options: StaticInt8Options, excluded: list[str], stage: str, changes: dict) -> VariantOutcome:
        trial = VariantOutcome(name="v", method="static_int8", options={}, status="passed" if needed <= set(excluded) else "failed")
        done.judged.append((trial, excluded))
        done.options.append(options)
        return trial

    attempt(StaticInt8Options(method="static_int8"), [], "settings", {})  # nothing in float: fails
    attempt(StaticInt8Options(method="static_int8"), [n for u in units for n in u], "float", {})  # all 16: passes
    conclusion = _step_back(units, 1, {}, attempt, done)
    assert min(len(e) for t, e in done.judged if t.passed) == 3 and len(done.judged) - 2 <= 4  # log2(16) attempts, not 15
    assert "returned 13 unit(s)" in conclusion
