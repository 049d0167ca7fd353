"""Static INT8 on real quantized graphs, the sensitivity ranking, the fallback search and its lock file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest
import yaml

from quant.sensitivity import rank_nodes
from tests.conftest import base_recipe, run_cli, tiny_ctc_model, write_recipe

GATES = [{"metric": "ctc_exact_match", "min": 0.9}, {"metric": "cosine", "min": 0.99}]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_static_qdq_and_qoperator_graphs(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    variants = {
        "qdq": {"method": "static_int8", "format": "QDQ", "op_types": ["Conv", "MatMul"]},
        "qop": {"method": "static_int8", "format": "QOperator", "op_types": ["Conv", "MatMul"], "calibrate": "percentile"},
        "entropy": {"method": "static_int8", "calibrate": "entropy", "exclude_nodes": ["head"]},
    }
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants=variants))
    done = run_cli("--recipe", str(path), "--out", str(root / "run"), cwd=root)
    assert done.returncode == 0, done.stderr
    variants_dir = root / "run" / "variants"
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(variants_dir / "qdq.onnx")
    assert "QLinearConv" in _op_types(variants_dir / "qop.onnx")
    entropy = onnx.load(str(variants_dir / "entropy.onnx"))
    head = next(n for n in entropy.graph.node if n.name == "head")
    assert head.op_type == "MatMul" and not any(i.endswith("_DequantizeLinear_Output") for i in head.input)  # excluded: left in float
    results = json.loads((root / "run" / "results.json").read_text())
    calibrations = {name: v["build"]["calibration"] for name, v in results["variants"].items()}
    assert calibrations["qdq"]["method"] == "minmax" and calibrations["entropy"]["method"] == "entropy"


def test_sensitivity_ranks_the_broken_node_first(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    onnx.save(tiny_ctc_model(weight_outlier=True), str(workspace["model"]))
    variants = {"s": {"method": "static_int8", "per_channel": False, "op_types": ["Conv", "MatMul"]}}
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants=variants, gates=GATES))
    assert run_cli("--recipe", str(path), "--out", str(root / "run"), cwd=root).returncode == 1
    from PIL import Image

    from quant.data.transforms import image_to_tensor
    from quant.recipe.schema import ImageInput

    spec = ImageInput.model_validate(base_recipe(workspace["model"], workspace["calib"], workspace["eval"])["inputs"]["x"])
    feeds = [{"x": image_to_tensor(Image.open(p), spec)} for p in sorted(workspace["eval"].glob("*.png"))[:4]]
    ranking = rank_nodes(workspace["model"], root / "run" / "variants" / "s.onnx", feeds)
    assert ranking[0].node == "conv1" and ranking[0].added_error > 5 * max(n.added_error for n in ranking[1:])


def test_fallback_finds_the_node_and_the_lock_rebuilds_the_same_model(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    onnx.save(tiny_ctc_model(weight_outlier=True), str(workspace["model"]))
    variants = {"int8": {"method": "static_int8", "per_channel": False, "op_types": ["Conv", "MatMul"], "fallback": {"max_nodes": 2, "samples": 4}}}
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants=variants, gates=GATES)
    path = write_recipe(root, {**recipe, "tuning": {"source": {"images": str(workspace["tune"])}}})
    done = run_cli("--recipe", str(path), "--out", str(root / "run"), cwd=root)
    assert done.returncode == 0, done.stderr
    results = json.loads((root / "run" / "results.json").read_text())
    search = results["variants"]["int8"]["search"]
    assert [a["nodes_in_float"] for a in search["attempts"]] == [0, 1]
    assert [a["passed"] for a in search["attempts"]] == [False, True]
    assert search["attempts"][1]["excluded"] == ["conv1"] and search["sensitivity"][0]["node"] == "conv1"
    lock = root / "run" / "recipe.lock.yaml"
    locked = yaml.safe_load(lock.read_text())
    assert locked["variants"]["int8"]["exclude_nodes"] == ["conv1"] and "fallback" not in locked["variants"]["int8"]
    # The lock rebuilds the promoted model without a search: same bytes, same gate results.
    again = run_cli("--recipe", str(lock), "--out", str(root / "relock"), cwd=root)
    assert again.returncode == 0, again.stderr
    relocked = json.loads((root / "relock" / "results.json").read_text())
    assert relocked["variants"]["int8"]["search"] is None
    assert _sha(root / "relock" / "variants" / "int8.onnx") == _sha(root / "run" / "variants" / "int8.onnx")
    strip = lambda gates: [{k: g[k] for k in ("metric", "observed", "passed")} for g in gates if g["metric"] != "latency_ratio"]
    assert strip(relocked["variants"]["int8"]["gates"]) == strip(results["variants"]["int8"]["gates"])


@pytest.mark.parametrize("when", ["once_accurate", "every_attempt"])
def test_an_attempt_that_failed_accuracy_is_not_benchmarked_unless_asked(workspace: dict[str, Path], when: str) -> None:
    """A benchmark runs alone and cannot rescue a failed accuracy gate: by default only the passing attempt and the
    verdict are timed; `every_attempt` times them all (the full trade-off curve)."""
    root = workspace["root"]
    onnx.save(tiny_ctc_model(weight_outlier=True), str(workspace["model"]))
    fallback = {"max_nodes": 2, "samples": 4, "latency": when}
    variants = {"int8": {"method": "static_int8", "per_channel": False, "op_types": ["Conv", "MatMul"], "fallback": fallback}}
    gates = [*GATES, {"metric": "latency_ratio", "max": 100.0}]
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants=variants, gates=gates)
    path = write_recipe(root, {**recipe, "tuning": {"source": {"images": str(workspace["tune"])}}})
    done = run_cli("--recipe", str(path), "--out", str(root / "run"), cwd=root)
    assert done.returncode == 0, done.stderr
    results = json.loads((root / "run" / "results.json").read_text())
    attempts = results["variants"]["int8"]["search"]["attempts"]
    assert [a["passed"] for a in attempts] == [False, True]
    timed = [a["latency_ratio"] is not None for a in attempts]
    assert timed == ([True, True] if when == "every_attempt" else [False, True])
    assert ("latency_note" in attempts[0]) is (when == "once_accurate")
    assert [g["metric"] for g in results["variants"]["int8"]["gates"]].count("latency_ratio") == 1  # the verdict is timed
    benchmarks = [s for s in results["stages"] if s["stage"] == "latency"]
    assert [s["split"] for s in benchmarks] == ["tuning"] * sum(timed) + ["evaluation"]


def _model_with_external_weights(path: Path) -> None:
    """A tiny model whose weights live in an external-data file beside it, as a >2 GB model's must."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data", size_threshold=0)


def test_the_search_keeps_the_external_data_of_the_model_it_chooses(tmp_path: Path) -> None:
    """The chosen attempt is copied to variants/ with its external-data file (a bare byte copy of the .onnx lost it)."""
    from quant.methods.base import BuildResult
    from quant.outcome import VariantOutcome
    from quant.recipe.schema import StaticInt8Options
    from quant.search import SearchSetup, search_fallback

    built_options: list[StaticInt8Options] = []

    def build(options: StaticInt8Options, out_path: Path) -> BuildResult:
        built_options.append(options)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        _model_with_external_weights(out_path)
        return BuildResult(out_path, {"prepared_model": str(out_path)})

    def judge(candidate: Path) -> VariantOutcome:
        return VariantOutcome(name="int8", method="static_int8", options={}, status="passed", model_path=candidate)

    variant = StaticInt8Options(method="static_int8", exclude_nodes=["head"], fallback={"max_nodes": 2})
    places = SearchSetup(work_dir=tmp_path / "work", final=tmp_path / "variants" / "int8.onnx", tuning_name="tuning", tuning_samples=0)
    template = VariantOutcome(name="int8", method="static_int8", options={})
    chosen, chosen_options = search_fallback(variant, template, build, judge, None, lambda n: [], places, lambda _: None)
    assert chosen_options.exclude_nodes == ["head"] and chosen.model_path == places.final
    assert built_options[0].exclude_nodes == ["head"]  # the recipe's exclusions ride in the typed options
    copied = onnx.load(str(places.final))  # loads the external data too: fails when the data file was left behind
    assert onnx.numpy_helper.to_array(copied.graph.initializer[0]).sum() == sum(range(64))
    assert (places.final.parent / "attempt-000.onnx.data").is_file()
