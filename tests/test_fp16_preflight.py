"""The FP16 pre-flight: exact normalisation, the scan finding what FP16 cannot hold, and the repair that keeps it
in FP32 — checked on tiny models that break a plain FP16 conversion the way real exports do."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from quant.fp16.normalise import normalised_model
from quant.fp16.repair import _search
from quant.fp16.scan import scan
from quant.model import file_sha256
from quant.outcome import VariantOutcome
from tests.conftest import HEIGHT, REPO, base_recipe, run_cli, write_images, write_recipe

CHANNELS = 4
VARIANCE = 4.0e6  # a BatchNormalization running variance beyond FP16's 65504


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    """An unnamed Constant node, as the PaddlePaddle exporter writes every weight."""
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.float32), name + "_value"))


def _image_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, HEIGHT, "W"])


def _map_output() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, HEIGHT, "W"])


def bn_in_constants_model() -> onnx.ModelProto:
    """x -> Conv (large weights) -> BatchNormalization (variance 4e6) -> Sigmoid; every weight in an unnamed Constant node."""
    rng = np.random.default_rng(0)
    nodes = [
        _constant("w", rng.normal(0, 300, (CHANNELS, 3, 3, 3))),
        _constant("b", rng.normal(0, 10, CHANNELS)),
        _constant("scale", rng.uniform(0.5, 1.5, CHANNELS)),
        _constant("shift", rng.normal(0, 0.2, CHANNELS)),
        _constant("mean", rng.normal(0, 50, CHANNELS)),
        _constant("var", np.full(CHANNELS, VARIANCE)),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"], epsilon=1e-5),
        helper.make_node("Sigmoid", ["n"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "bn", [_image_input()], [_map_output()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def decomposed_layernorm_model() -> onnx.ModelProto:
    """x*600 -> LayerNorm along the width written out as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div (onnxruntime issue 31626):
    (x - mean)² reaches ~6e5 inside the Pow while the normalised output stays within ±2."""
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in (("gain", 600.0), ("two", 2.0), ("eps", 1e-5))]
    nodes = [
        helper.make_node("Mul", ["x", "gain"], ["h"], name="scale_up"),
        helper.make_node("ReduceMean", ["h"], ["mu"], name="mean", axes=[3], keepdims=1),
        helper.make_node("Sub", ["h", "mu"], ["d"], name="centre"),
        helper.make_node("Pow", ["d", "two"], ["sq"], name="square"),
        helper.make_node("ReduceMean", ["sq"], ["var"], name="variance", axes=[3], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="add_eps"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="std"),
        helper.make_node("Div", ["d", "std"], ["y"], name="normalise"),
    ]
    graph = helper.make_graph(nodes, "ln", [_image_input()], [_map_output()], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _random_feeds(count: int) -> list[dict[str, np.ndarray]]:
    """Random NCHW inputs in [-1, 1], as the recipes' images become after mean/std."""
    rng = np.random.default_rng(5)
    return [{"x": rng.uniform(-1, 1, (1, 3, HEIGHT, 24)).astype(np.float32)} for _ in range(count)]


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _workspace(tmp_path: Path, model: onnx.ModelProto, variants: dict, gates: list[dict], tuning: bool = False) -> Path:
    onnx.save(model, str(tmp_path / "m.onnx"))
    write_images(tmp_path / "calib", 8, seed=1, prefix="c")
    write_images(tmp_path / "eval", 6, seed=2, prefix="e")
    recipe = base_recipe(tmp_path / "m.onnx", tmp_path / "calib", tmp_path / "eval", outputs={}, variants=variants, gates=gates)
    if tuning:
        write_images(tmp_path / "tune", 5, seed=3, prefix="t")
        recipe["tuning"] = {"source": {"images": str(tmp_path / "tune")}}
    return write_recipe(tmp_path, recipe)


def _elem_type(path: Path, tensor: str) -> int:
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    return next(v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output] if v.name == tensor)


def _variant(results: dict, name: str) -> dict:
    return results["variants"][name]


# --------------------------------------------------------------------------- normalisation


def test_normalisation_is_exact_names_every_node_and_folds_constants_and_batchnorm(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(bn_in_constants_model(), str(source))
    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, HEIGHT, 24)).astype(np.float32)
    for fold in (True, False):
        path = normalised_model(source, file_sha256(source), fold, tmp_path / f"cache-{fold}")
        model = onnx.load(str(path))
        ops = [n.op_type for n in model.graph.node]
        assert "Constant" not in ops and all(n.name for n in model.graph.node)
        assert ("BatchNormalization" in ops) is not fold
        np.testing.assert_allclose(_run(path, x), _run(source, x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- scan


def test_scan_finds_the_batchnorm_variance_beyond_fp16_and_flags_its_node(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(bn_in_constants_model(), str(source))
    path = normalised_model(source, file_sha256(source), False, tmp_path / "cache")
    result = scan(path, _random_feeds(3), threshold=4.0)
    overflow = [f for f in result.findings if f.kind == "initializer_overflow"]
    bn = next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "BatchNormalization")
    assert [f.nodes for f in overflow] == [(bn,)] and overflow[0].abs_max == VARIANCE and overflow[0].headroom < 1
    assert result.flagged_nodes == [bn] and result.samples == 3


def test_scan_sees_the_overflow_inside_a_decomposed_layernorm(tmp_path: Path) -> None:
    path = tmp_path / "ln.onnx"
    onnx.save(decomposed_layernorm_model(), str(path))
    result = scan(path, _random_feeds(3), threshold=4.0)
    by_tensor = {f.tensor: f for f in result.findings if f.kind == "activation"}
    assert by_tensor["sq"].headroom < 1 and by_tensor["sq"].flagged and set(by_tensor["sq"].nodes) == {"square", "variance"}
    assert not by_tensor["y"].flagged and not by_tensor["d"].flagged  # the pattern's input and output look harmless
    accumulators = {f.op_type for f in result.findings if f.kind == "accumulator"}
    assert accumulators == {"ReduceMean"}  # the means' sums are reported too (not kept in FP32: CPU kernels sum in FP32)


def test_scan_reports_the_inside_of_layernormalization_and_softmax_with_measured_counts(tmp_path: Path) -> None:
    """x*300 -> LayerNormalization over the last axis (24 values) -> Softmax over the width: the squares inside the
    LayerNorm (|x|² up to 9e4) exceed FP16 while no tensor does; the Softmax sums 24 exponentials."""
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in (("gain", 300.0), ("g", np.ones(24)), ("b", np.zeros(24)))]
    nodes = [
        helper.make_node("Mul", ["x", "gain"], ["h"], name="scale_up"),
        helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], name="layernorm", axis=-1),
        helper.make_node("Softmax", ["n"], ["y"], name="softmax", axis=-1),
    ]
    fixed = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, HEIGHT, 24])
    graph = helper.make_graph(nodes, "ln_softmax", [fixed], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, HEIGHT, 24])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "ln_softmax.onnx"
    onnx.save(model, str(path))
    result = scan(path, _random_feeds(2), threshold=4.0)
    inside = {f.op_type: f for f in result.findings if f.kind == "accumulator"}
    assert "over 24 values" in inside["LayerNormalization"].why and inside["LayerNormalization"].headroom < 1
    assert inside["Softmax"].abs_max == 24 and not any(f.flagged for f in inside.values())
    assert all(f.headroom > 4 for f in result.findings if f.kind == "activation")  # every tensor looks harmless


def test_repair_search_doubles_then_bisects_to_the_fewest_nodes_and_respects_max_nodes_and_the_budget() -> None:
    ranked = [f"n{i}" for i in range(40)]
    tried: list[list[str]] = []

    def attempt_needing(count: int):  # passes once `count` of the ranked nodes are kept (a stand-in for build + validate)
        def attempt(keep: list[str]) -> VariantOutcome:
            tried.append(keep)
            outcome = VariantOutcome(name="v", method="fp16", options={})
            outcome.status = "passed" if len(set(keep) & set(ranked[:count])) == count else "failed"
            return outcome

        return attempt

    first = VariantOutcome(name="v", method="fp16", options={}, status="failed")
    conclusion = _search(attempt_needing(5), first, ["flagged"], ["flagged", *ranked], 32, time.perf_counter() + 600)
    assert [len(keep) - 1 for keep in tried] == [1, 2, 4, 8, 6, 5] and "5 more" in conclusion
    assert all(keep[0] == "flagged" for keep in tried)
    tried.clear()
    conclusion = _search(attempt_needing(20), first, [], ranked, 8, time.perf_counter() + 600)
    assert [len(keep) for keep in tried] == [1, 2, 4, 8] and "no attempt passed" in conclusion
    tried.clear()
    assert "time budget" in _search(attempt_needing(1), first, [], ranked, 8, time.perf_counter() - 1) and not tried


# --------------------------------------------------------------------------- repair, end to end


def test_repair_keeps_the_overflowing_batchnorm_in_fp32_where_a_plain_conversion_fails(tmp_path: Path) -> None:
    same_normalisation = {"method": "fp16", "fold_batchnorm": False}
    variants = {"plain": same_normalisation, "repaired": {**same_normalisation, "repair": "auto"}}
    recipe = _workspace(tmp_path, bn_in_constants_model(), variants, [{"metric": "max_abs", "max": 0.02}, {"metric": "nonfinite", "max": 0}])
    done = run_cli("--recipe", str(recipe), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    plain, repaired = _variant(results, "plain"), _variant(results, "repaired")
    assert plain["status"] == "failed" and plain["build"]["values_clipped_to_fp16_range"] == CHANNELS
    assert [g["metric"] for g in plain["gates"] if not g["passed"]] == ["max_abs"]  # finite but wrong: nonfinite cannot see it
    assert repaired["status"] == "passed" and repaired["build"]["values_clipped_to_fp16_range"] == 0
    preflight = repaired["build"]["fp16_preflight"]
    assert preflight["split"] == "calibration" and preflight["flagged_nodes"] == repaired["build"]["keep_fp32"]
    assert "initializer_overflow" in next(iter(repaired["build"]["kept_fp32_reasons"].values()))
    assert repaired["search"]["attempts"][0]["passed"] and len(repaired["search"]["attempts"]) == 1
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "kept in FP32" in summary and "BatchNormalization" in summary
    html = (tmp_path / "run" / "report.html").read_text()
    assert "FP16 pre-flight: repaired" in html and "headroom" in html


def test_repair_of_a_decomposed_layernorm_and_its_lock_rebuild_the_same_bytes(tmp_path: Path) -> None:
    variants = {"plain": {"method": "fp16"}, "repaired": {"method": "fp16", "repair": "auto"}}
    gates = [{"metric": "max_abs", "max": 0.05}, {"metric": "nonfinite", "max": 0}]
    recipe = _workspace(tmp_path, decomposed_layernorm_model(), variants, gates, tuning=True)
    done = run_cli("--recipe", str(recipe), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert _variant(results, "repaired")["status"] == "passed"
    kept = _variant(results, "repaired")["build"]["keep_fp32"]
    assert {"square", "variance"} <= set(kept) and "scale_up" not in kept
    # Scanned on the calibration images, validated on the tuning images: never on the evaluation images the gates judge.
    assert _variant(results, "repaired")["build"]["fp16_preflight"]["split"] == "calibration"
    assert [a["split"] for a in _variant(results, "repaired")["search"]["attempts"]] == ["tuning"]
    # The plain model squares in FP16 (|x|² up to ~8e5 > 65504): it overflows on execution providers with FP16
    # kernels (onnxruntime's CPU has none for these ops and runs them in FP32 itself, so its gate cannot show it).
    # The repaired one hands the squares from Pow to ReduceMean in FP32, with no Cast to FP16 in between.
    assert _elem_type(tmp_path / "run" / "variants" / "plain.onnx", "sq") == TensorProto.FLOAT16
    repaired = onnx.load(str(tmp_path / "run" / "variants" / "repaired.onnx"))
    square, variance = (next(n for n in repaired.graph.node if n.name == name) for name in ("square", "variance"))
    assert variance.input[0] == square.output[0]
    assert _elem_type(tmp_path / "run" / "variants" / "repaired.onnx", square.output[0]) == TensorProto.FLOAT
    onnx.checker.check_model(repaired)
    lock = tmp_path / "run" / "recipe.lock.yaml"
    locked = yaml.safe_load(lock.read_text())["variants"]["repaired"]
    assert locked["keep_fp32"] == kept and locked["repair"] == "scan"
    again = run_cli("--recipe", str(lock), "--out", str(tmp_path / "again"), "--cache", str(tmp_path / "cache"), "--only", "repaired", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    first, second = (folder / "variants" / "repaired.onnx" for folder in (tmp_path / "run", tmp_path / "again"))
    assert first.read_bytes() == second.read_bytes()


# --------------------------------------------------------------------------- the real model


@pytest.mark.integration
def test_real_det_model_fp16_passes_after_normalisation_where_the_plain_conversion_fails(tmp_path: Path) -> None:
    """PP-OCRv4 det: a BatchNormalization variance of 9.79e7 held in a Constant node; converted as shipped it loses
    the map, normalised (BN folded into its Conv) it keeps it — judged on evaluation pages the repair never read."""
    recipe = tmp_path / "det-small.yaml"
    recipe.write_text(
        f"extends: {REPO / 'recipes' / 'edge-cpu-det.yaml'}\n"
        "name: det-small\n"
        "calibration: {samples: 2}\n"
        "evaluation: {samples: 3}\n"
        "variants:\n"
        "  fp16: {preflight: {samples: 2}}\n"
        "  fp16-as-shipped: {method: fp16, normalize: false, gates: [{metric: map_iou, min: 0.999}]}\n"
        "gates: [{metric: map_iou, min: 0.999}, {metric: nonfinite, max: 0}]\n"
        "bench: {samples: 1, rounds: 3, warmup: 0}\n"
        f"promotion: {{to: {tmp_path / 'releases'}}}\n"
    )
    run_cli("--recipe", str(recipe), "--out", str(tmp_path / "run"), "--only", "fp16", "--only", "fp16-as-shipped", cwd=tmp_path)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    repaired, plain = results["variants"]["fp16"], results["variants"]["fp16-as-shipped"]
    iou = {name: next(g["observed"] for g in v["gates"] if g["metric"] == "map_iou") for name, v in (("repaired", repaired), ("plain", plain))}
    assert iou["repaired"] >= 0.999 and iou["plain"] < 0.9, iou
    assert plain["build"]["values_clipped_to_fp16_range"] > 0 and repaired["build"]["values_clipped_to_fp16_range"] == 0
    assert repaired["build"]["normalized"] and repaired["build"]["fp16_preflight"]["samples"] == 2
    assert repaired["size_ratio"] < 0.55
