"""Models whose network sits inside an If (Silero VAD's export, merged decoders): dynamic INT8 quantizes
inside the subgraphs; static INT8, which cannot, is refused at --validate instead of building an FP32 copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli, write_recipe


def _branch(name: str, seed: int) -> onnx.GraphProto:
    """x[1,16] (from the outer scope) -> MatMul -> Relu -> MatMul -> [1,8], weights inside the branch."""
    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), f"{name}_w{i}") for i, shape in enumerate(((16, 32), (32, 8)))]
    nodes = [
        helper.make_node("MatMul", ["x", f"{name}_w0"], [f"{name}_h"], name=f"{name}_mm0"),
        helper.make_node("Relu", [f"{name}_h"], [f"{name}_r"], name=f"{name}_relu"),
        helper.make_node("MatMul", [f"{name}_r", f"{name}_w1"], [f"{name}_y"], name=f"{name}_mm1"),
    ]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, 8])], weights)


def if_wrapped_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0),
        helper.make_node("Constant", [], ["floor"], name="floor", value=numpy_helper.from_array(np.array(-1e9, np.float32))),
        helper.make_node("Greater", ["total", "floor"], ["cond"], name="always"),
        helper.make_node("If", ["cond"], ["y"], name="wrap", then_branch=_branch("then", 1), else_branch=_branch("else", 2)),
    ]
    graph = helper.make_graph(
        nodes,
        "wrapped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _recipe(root: Path, variants: dict) -> Path:
    onnx.save(if_wrapped_model(), str(root / "wrapped.onnx"))
    rng = np.random.default_rng(0)
    np.savez(root / "calib.npz", x=rng.normal(size=(8, 16)).astype(np.float32))
    np.savez(root / "eval.npz", x=rng.normal(size=(6, 16)).astype(np.float32))
    recipe = {
        "name": "wrapped",
        "model": {"path": "wrapped.onnx"},
        "outputs": {"y": {"kind": "tensor"}},
        "calibration": {"source": {"npz": "calib.npz"}},
        "evaluation": {"source": {"npz": "eval.npz"}},
        "variants": variants,
        "gates": [{"metric": "cosine", "min": 0.95}],
        "bench": {"samples": 1, "rounds": 3, "warmup": 0, "threads": 1},
    }
    return write_recipe(root, recipe)


def test_dynamic_int8_quantizes_inside_the_if(tmp_path: Path) -> None:
    done = run_cli("--recipe", str(_recipe(tmp_path, {"d": {"method": "dynamic_int8"}})), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    variant = json.loads((tmp_path / "run" / "results.json").read_text())["variants"]["d"]
    assert variant["status"] == "passed" and variant["build"]["subgraphs_quantized"] is True
    assert variant["build"]["quantized_ops"]["MatMulInteger"] == 4  # both branches, counted inside the subgraphs
    built = onnx.load(str(tmp_path / "run" / "variants" / "d.onnx"))
    then_branch = next(a.g for n in built.graph.node if n.op_type == "If" for a in n.attribute if a.name == "then_branch")
    assert {n.op_type for n in then_branch.node} >= {"MatMulInteger", "DynamicQuantizeLinear"}


def test_static_int8_of_an_if_wrapped_model_is_refused_at_validate(tmp_path: Path) -> None:
    done = run_cli("--recipe", str(_recipe(tmp_path, {"s": {"method": "static_int8"}})), "--validate", cwd=tmp_path)
    assert done.returncode == 2
    assert "variants.s.method" in done.stderr and "inside If/Loop/Scan subgraphs (MatMul x4)" in done.stderr and "dynamic_int8" in done.stderr
