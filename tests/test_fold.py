"""The exact FP32 rewrites (prepare.fuse): fewer ops, same answers, and no fold where it would not be exact."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.methods.fold import fuse_exact
from quant.methods.prepare import prepared_model
from quant.model import file_sha256
from quant.recipe.schema import Prepare

C = 4


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def lcnet_block(second_conv_pads: int = 0, opset: int = 14, share_conv_output: bool = False) -> onnx.ModelProto:
    """x -> Conv -> Mul(a) -> Add(b) -> hardswish as x*Clip(x+3,0,6)/6 -> Mul(c) -> Add(d) -> Conv -> Mul(e) -> Conv(pad 1) -> y.

    The PP-LCNetV3 shapes: a LearnableAffineBlock after the Conv, an unfused hardswish, another affine before the next Conv."""
    rng = np.random.default_rng(0)
    per_channel = lambda: rng.uniform(0.5, 1.5, (1, C, 1, 1))
    inits = [
        _const("W1", rng.normal(0, 0.5, (C, 3, 3, 3))), _const("B1", rng.normal(0, 0.1, C)),
        _const("a", per_channel()), _const("b", rng.normal(0, 0.2, (1, C, 1, 1))), _const("three", 3.0),
        _const("zero", 0.0), _const("six", 6.0), _const("c", per_channel()), _const("d", rng.normal(0, 0.2, (1, C, 1, 1))),
        _const("W2", rng.normal(0, 0.5, (C, C, 1, 1))), _const("B2", rng.normal(0, 0.1, C)), _const("e", per_channel()),
        _const("W3", rng.normal(0, 0.5, (C, 1, 3, 3))),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c1", "a"], ["m1"], name="affine_mul"),
        helper.make_node("Add", ["m1", "b"], ["h"], name="affine_add"),
        helper.make_node("Add", ["h", "three"], ["h3"], name="hs_add"),
        helper.make_node("Clip", ["h3", "zero", "six"], ["hc"], name="hs_clip"),
        helper.make_node("Mul", ["h", "hc"], ["hm"], name="hs_mul"),
        helper.make_node("Div", ["hm", "six"], ["hs"], name="hs_div"),
        helper.make_node("Mul", ["hs", "c"], ["pc"], name="pre_mul"),
        helper.make_node("Add", ["pc", "d"], ["pd"], name="pre_add"),
        helper.make_node("Conv", ["pd", "W2", "B2"], ["c2"], name="conv2", pads=[second_conv_pads] * 4),
        helper.make_node("Mul", ["c2", "e"], ["pe"], name="pre_mul2"),
        helper.make_node("Conv", ["pe", "W3"], ["y"], name="depthwise", pads=[1, 1, 1, 1], group=C),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 16, 16])]
    if share_conv_output:
        outputs.append(helper.make_tensor_value_info("c1", TensorProto.FLOAT, [1, C, 16, 16]))
    graph = helper.make_graph(nodes, "lcnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _x() -> np.ndarray:
    return np.random.default_rng(1).normal(0, 1, (1, 3, 16, 16)).astype(np.float32)


def test_every_pattern_is_rewritten_and_the_answers_stay_the_same() -> None:
    original = lcnet_block()
    expected = _run(original, _x())
    fused, counts = fuse_exact(onnx.load_from_string(original.SerializeToString()))
    # conv2 -> Mul(e) goes as "after conv2" (that pass runs first); Mul(c) -> Add(d) goes into conv2.
    assert counts == {"hardswish": 1, "affine_after_conv": 3, "affine_before_conv": 2}
    onnx.checker.check_model(fused)
    assert Counter(n.op_type for n in fused.graph.node) == Counter({"Conv": 3, "HardSwish": 1})
    for before, after in zip(expected, _run(fused, _x())):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_no_fold_where_it_would_not_be_exact_or_would_change_an_output() -> None:
    # An Add in front of a padded Conv: zero padding of (h + d) is not d, so that Add (and the Mul behind it) stay...
    padded = lcnet_block(second_conv_pads=1)
    expected = _run(padded, _x())
    fused, counts = fuse_exact(onnx.load_from_string(padded.SerializeToString()))
    assert counts["affine_before_conv"] == 0 and {"pre_mul", "pre_add"} <= {n.name for n in fused.graph.node}
    np.testing.assert_allclose(_run(fused, _x())[0], expected[0], rtol=1e-5, atol=1e-5)
    # ...a Conv output that is also a graph output keeps its value, so nothing is folded into that Conv...
    shared = lcnet_block(share_conv_output=True)
    expected = _run(shared, _x())
    fused, counts = fuse_exact(onnx.load_from_string(shared.SerializeToString()))
    assert {"affine_mul", "affine_add"} <= {n.name for n in fused.graph.node} and counts["affine_after_conv"] == 1  # conv2's Mul(e) only
    for before, after in zip(expected, _run(fused, _x())):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    # ...and below opset 14 there is no HardSwish to fuse into.
    assert fuse_exact(lcnet_block(opset=13))[1]["hardswish"] == 0


def test_prepare_fuse_raises_the_opset_and_caches_the_fused_model(tmp_path: Path) -> None:
    source = tmp_path / "block.onnx"
    onnx.save(lcnet_block(opset=13), str(source))
    settings = Prepare(opset=13, preprocess=True, fuse=True)
    fused_path = prepared_model(source, file_sha256(source), settings, tmp_path / "cache")
    fused = onnx.load(str(fused_path))
    assert next(o.version for o in fused.opset_import if o.domain in ("", "ai.onnx")) >= 14
    assert {"HardSwish"} <= {n.op_type for n in fused.graph.node} and "Clip" not in {n.op_type for n in fused.graph.node}
    np.testing.assert_allclose(_run(fused, _x())[0], _run(lcnet_block(), _x())[0], rtol=1e-5, atol=1e-5)
    assert prepared_model(source, file_sha256(source), settings, tmp_path / "cache") == fused_path
    unfused = prepared_model(source, file_sha256(source), Prepare(opset=13, preprocess=True), tmp_path / "cache")
    assert unfused != fused_path and "Clip" in {n.op_type for n in onnx.load(str(unfused)).graph.node}


@pytest.mark.parametrize("op_type", ["Mul", "Add"])
def test_a_non_constant_or_non_per_channel_operand_is_left_alone(op_type: str) -> None:
    rng = np.random.default_rng(2)
    inits = [_const("W", rng.normal(0, 0.5, (C, 3, 1, 1))), _const("full", rng.normal(0, 1, (1, C, 16, 16)))]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"), helper.make_node(op_type, ["c", "full"], ["y"], name="spatial")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 16, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    fused, counts = fuse_exact(onnx.load_from_string(model.SerializeToString()))
    assert counts == {"hardswish": 0, "affine_after_conv": 0, "affine_before_conv": 0}
    np.testing.assert_allclose(_run(fused, _x())[0], _run(model, _x())[0])
