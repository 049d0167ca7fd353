"""Bias correction: the corrected INT8 model's output is closer to FP32 on inputs it was not measured on, and it is
still a QDQ graph whose biases onnxruntime quantized to int32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.data.sources import open_source
from quant.methods.base import BuildContext
from quant.methods.static_int8 import build_static_int8
from quant.model import file_sha256
from quant.recipe.schema import DataSet, StaticInt8Options

SHAPE = (1, 4, 8, 8)


def _two_convs(seed: int = 0) -> onnx.ModelProto:
    """x -> Conv -> Relu -> Conv -> MatMul + Add: one large filter makes the per-tensor 7-bit weight scale coarse,
    so the other filters' rounding errors are large and, on inputs with a non-zero mean, shift their outputs."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32)
    w1[0] *= 8  # the filter that sets the per-tensor scale
    w2 = rng.normal(0, 0.2, (6, 8, 3, 3)).astype(np.float32)
    w2[0] *= 8
    wm = rng.normal(0, 0.5, (8, 5)).astype(np.float32)
    wm[:, 0] *= 8
    initializers = {
        "w1": w1, "b1": rng.normal(0, 0.1, 8), "w2": w2, "b2": rng.normal(0, 0.1, 6),
        "wm": wm, "bm": rng.normal(0, 0.1, 5), "shape": np.array([1, 6 * 8, 8], np.int64),
    }  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c2", "shape"], ["rows"], name="rows"),
        helper.make_node("MatMul", ["rows", "wm"], ["m"], name="head"),
        helper.make_node("Add", ["m", "bm"], ["y"], name="head_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48, 5])],
        [numpy_helper.from_array(np.asarray(v, np.int64 if n == "shape" else np.float32), n) for n, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _inputs(count: int, seed: int) -> np.ndarray:
    # Image-like: non-negative with a non-zero mean, as a first conv sees it.
    return np.random.default_rng(seed).uniform(0, 1, (count, *SHAPE[1:])).astype(np.float32)


def _build(tmp_path: Path, model: Path, calibration: Path, correct: bool, error: str = "layer") -> tuple[Path, dict]:
    source = open_source(DataSet.model_validate({"source": {"npz": str(calibration)}}), tmp_path, {}, ["x"], "calibration")
    inputs = {"x": list(SHAPE)}
    context = BuildContext(model, file_sha256(model), inputs, tmp_path / "work", tmp_path / "cache", calibration=source, log=lambda _: None)
    options = StaticInt8Options(
        method="static_int8", per_channel=False, reduce_range=True, op_types=["Conv", "MatMul"], prepare={"opset": None, "preprocess": False},
        bias_correction=correct, bias_correction_error=error,
    )  # fmt: skip
    result = build_static_int8(options, context, tmp_path / (f"corrected-{error}.onnx" if correct else "plain.onnx"))
    return result.path, result.details


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("bias")
    model = root / "fp32.onnx"
    onnx.save(_two_convs(), str(model))
    np.savez(root / "calib.npz", x=_inputs(24, seed=1))
    plain, _ = _build(root, model, root / "calib.npz", correct=False)
    corrected, details = _build(root, model, root / "calib.npz", correct=True)
    weights_only, _ = _build(root, model, root / "calib.npz", correct=True, error="weights")
    return {"fp32": model, "plain": plain, "corrected": corrected, "details": details, "weights_only": weights_only}


def _errors(candidate: Path, reference: Path, inputs: np.ndarray) -> tuple[float, float]:
    """(mean over output channels of |mean error|, mean squared error) of candidate vs reference over the inputs."""
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (candidate, reference)]
    differences = np.stack([runs[0].run(None, {"x": x[None]})[0] - runs[1].run(None, {"x": x[None]})[0] for x in inputs])
    per_channel_mean = differences.reshape(-1, differences.shape[-1]).mean(axis=0)
    return float(np.abs(per_channel_mean).mean()), float((differences**2).mean())


def test_bias_correction_brings_held_out_outputs_closer_to_fp32(built: dict) -> None:
    held_out = _inputs(24, seed=7)  # never seen by calibration nor by the correction
    plain_bias, plain_mse = _errors(built["plain"], built["fp32"], held_out)
    corrected_bias, corrected_mse = _errors(built["corrected"], built["fp32"], held_out)
    assert corrected_bias < 0.5 * plain_bias, (corrected_bias, plain_bias)
    assert corrected_mse < plain_mse, (corrected_mse, plain_mse)
    # Both convs and the MatMul+Add head were corrected, measured on the 24 calibration samples.
    assert built["details"]["bias_correction"]["layers"] == 3 and built["details"]["bias_correction"]["samples"] == 24


def test_the_corrected_model_is_still_quantized_with_int32_biases(built: dict) -> None:
    graph = onnx.load(str(built["corrected"])).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 6
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    assert initializers["w1_quantized"].dtype == np.int8 and initializers["b1_quantized"].dtype == np.int32
    # The weights are the same integers; only the biases moved.
    plain = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(built["plain"])).graph.initializer}
    assert np.array_equal(plain["w2_quantized"], initializers["w2_quantized"])
    assert not np.array_equal(plain["b2_quantized"], initializers["b2_quantized"])


def test_bias_correction_is_a_setting_the_search_tries() -> None:
    from quant.recipe.schema import SearchCandidate
    from quant.search_space import settings_to_try

    variant = StaticInt8Options(method="static_int8", reduce_range=True)
    candidates = [
        SearchCandidate(bias_correction=True), SearchCandidate(bias_correction=False), SearchCandidate(reduce_range=True, bias_correction=True)
    ]  # fmt: skip
    settings, _ = settings_to_try(variant, candidates)
    # The recipe's own setting (no correction) is not tried twice; the same setting with correction is a new one.
    assert [s.changes for s in settings] == [{"bias_correction": True}]
    assert settings[0].options.bias_correction and not variant.bias_correction


def test_the_weights_only_correction_removes_the_weights_rounding_bias(built: dict) -> None:
    held_out = _inputs(24, seed=7)
    plain_bias, _ = _errors(built["plain"], built["fp32"], held_out)
    weights_bias, _ = _errors(built["weights_only"], built["fp32"], held_out)
    assert weights_bias < 0.5 * plain_bias, (weights_bias, plain_bias)
    # It measures something else than the whole layer error: other biases.
    layer = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(built["corrected"])).graph.initializer}
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(built["weights_only"])).graph.initializer}
    assert not np.array_equal(layer["b1_quantized"], weights["b1_quantized"])
