"""A method that quantizes nothing leaves an FP32 copy: the variant says so and is never promoted;
quantized ops are counted for every op type (an LSTM's DynamicQuantizeLSTM too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import HEIGHT, base_recipe, run_cli, write_recipe

GATES = [{"metric": "cosine", "min": 0.9}]


def conv_only_model() -> onnx.ModelProto:
    """x[1,3,8,W] -> Conv -> Relu -> Conv -> y: a CNN with no MatMul for a MatMul-only method to find."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.4, shape).astype(np.float32), name) for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (4, 8, 3, 3)))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, HEIGHT, "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, HEIGHT, "W"])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def lstm_model(features: int = 4, hidden: int = 8) -> onnx.ModelProto:
    """x[1,T,F] -> Transpose -> LSTM (weights as initializers) -> y[T,1,1,H]."""
    rng = np.random.default_rng(1)
    weights = {
        "W": rng.normal(0, 0.5, (1, 4 * hidden, features)),
        "R": rng.normal(0, 0.5, (1, 4 * hidden, hidden)),
        "B": rng.normal(0, 0.1, (1, 8 * hidden)),
    }
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], name="to_time_major", perm=[1, 0, 2]),
        helper.make_node("LSTM", ["xt", "W", "R", "B"], ["y"], name="lstm", hidden_size=hidden),
    ]
    graph = helper.make_graph(
        nodes,
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 1, 1, hidden])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _results(root: Path) -> dict:
    return json.loads((root / "run" / "results.json").read_text())


def test_matmul_only_dynamic_int8_on_a_cnn_is_nothing_quantized_and_not_promoted(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    onnx.save(conv_only_model(), str(workspace["model"]))
    variants = {
        "fp16": {"method": "fp16"},
        "int8-dynamic": {"method": "dynamic_int8", "op_types": ["MatMul"]},
        "int8-static": {"method": "static_int8", "op_types": ["MatMul"], "fallback": {"max_nodes": 4}},
    }
    recipe = base_recipe(
        workspace["model"], workspace["calib"], workspace["eval"], variants=variants, gates=GATES, outputs={"y": {"kind": "tensor"}},
        tuning={"source": {"images": str(workspace["tune"])}},
    )  # fmt: skip
    done = run_cli("--recipe", str(write_recipe(root, recipe)), "--out", str(root / "run"), cwd=root)
    assert done.returncode == 0, done.stderr  # fp16 passes and is promoted
    results = _results(root)
    for name in ("int8-dynamic", "int8-static"):
        variant = results["variants"][name]
        assert variant["status"] == "nothing_quantized"
        assert variant["gates"] == [] and variant["metrics"] == {}  # an FP32 copy is not judged
        assert "Conv x2" in variant["note"] and "none of ['MatMul']" in variant["note"]
    search = results["variants"]["int8-static"]["search"]
    assert len(search["attempts"]) == 1 and search["chosen_because"] == "no attempt quantized any node"
    assert results["promotion"]["promoted"] == ["fp16"]
    release = Path(results["promotion"]["release"])
    assert sorted(p.name for p in release.glob("*.onnx")) == ["fp16.onnx"]
    assert "| int8-dynamic | dynamic_int8 | NOTHING QUANTIZED |" in done.stdout


def test_only_variant_nothing_quantized_fails_the_run(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    onnx.save(conv_only_model(), str(workspace["model"]))
    recipe = base_recipe(
        workspace["model"],
        workspace["calib"],
        workspace["eval"],
        variants={"d": {"method": "dynamic_int8", "op_types": ["MatMul"]}},
        gates=GATES,
        outputs={"y": {}},
    )
    done = run_cli("--recipe", str(write_recipe(root, recipe)), "--out", str(root / "run"), "--junit", str(root / "junit.xml"), cwd=root)
    assert done.returncode == 1, done.stderr
    assert "nothing quantized" in _results(root)["verdict"]
    assert not (root / "releases").exists()
    assert 'type="NothingQuantized"' in (root / "junit.xml").read_text()


def test_dynamic_int8_of_an_lstm_is_counted(tmp_path: Path) -> None:
    onnx.save(lstm_model(), str(tmp_path / "lstm.onnx"))
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "eval.npz", x=rng.normal(0, 1, (6, 5, 4)).astype(np.float32))
    recipe = {
        "name": "lstm",
        "model": {"path": "lstm.onnx"},
        "outputs": {"y": {"kind": "tensor"}},
        "evaluation": {"source": {"npz": "eval.npz"}},
        "variants": {"all-ops": {"method": "dynamic_int8"}, "matmul-only": {"method": "dynamic_int8", "op_types": ["MatMul"]}},
        "gates": GATES,
        "bench": {"samples": 1, "rounds": 3, "warmup": 0, "threads": 1},
    }
    done = run_cli("--recipe", str(write_recipe(tmp_path, recipe)), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    variants = _results(tmp_path)["variants"]
    assert variants["all-ops"]["status"] == "passed"
    assert variants["all-ops"]["build"]["quantized_ops"] == {"DynamicQuantizeLSTM": 1}
    assert variants["matmul-only"]["status"] == "nothing_quantized" and "LSTM x1" in variants["matmul-only"]["note"]
