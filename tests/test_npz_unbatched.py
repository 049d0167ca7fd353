"""An .npz source can feed rows exactly as stored: a recurrent state [2, 1, 4] and a scalar sample rate
(Silero VAD's inputs), next to an ordinary batched input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli, write_recipe


def stateful_model() -> onnx.ModelProto:
    """x[1,4], state[2,1,4], sr (int64 scalar) -> y = (x W) * sr/16000, new_state = state + x W."""
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.5, (4, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="project"),
        helper.make_node("Add", ["state", "h"], ["new_state"], name="carry"),
        helper.make_node("Cast", ["sr"], ["sr_f"], name="rate", to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["scale"], name="scale", value=numpy_helper.from_array(np.array(1 / 16000, np.float32))),
        helper.make_node("Mul", ["sr_f", "scale"], ["factor"], name="factor"),
        helper.make_node("Mul", ["h", "factor"], ["y"], name="scaled"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 4]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
        helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, 1, 4]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "stateful", inputs, outputs, [weight]), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _recipe(root: Path, unbatched: list[str]) -> Path:
    onnx.save(stateful_model(), str(root / "stateful.onnx"))
    rng = np.random.default_rng(1)
    rows = 6
    np.savez(
        root / "eval.npz",
        x=rng.normal(size=(rows, 4)).astype(np.float32),
        state=rng.normal(size=(rows, 2, 1, 4)).astype(np.float32),
        sr=np.full(rows, 16000, np.int64),
    )
    recipe = {
        "name": "stateful",
        "model": {"path": "stateful.onnx"},
        "outputs": {"y": {}, "new_state": {}},
        "evaluation": {"source": {"npz": "eval.npz", "unbatched": unbatched}},
        "variants": {"d": {"method": "dynamic_int8"}},
        "gates": [{"metric": "cosine", "min": 0.95}],
        "bench": {"samples": 1, "rounds": 3, "warmup": 0, "threads": 1},
    }
    return write_recipe(root, recipe)


def test_state_and_scalar_rows_are_fed_as_stored(tmp_path: Path) -> None:
    done = run_cli("--recipe", str(_recipe(tmp_path, ["state", "sr"])), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    variant = json.loads((tmp_path / "run" / "results.json").read_text())["variants"]["d"]
    assert variant["status"] == "passed" and set(variant["metrics"]) == {"y", "new_state"}


def test_without_unbatched_the_error_says_to_list_it(tmp_path: Path) -> None:
    done = run_cli("--recipe", str(_recipe(tmp_path, [])), "--validate", cwd=tmp_path)
    assert done.returncode == 2
    assert "expects [2, 1, 4]" in done.stderr and "under the source's `unbatched`" in done.stderr


def test_unbatched_names_a_model_input(tmp_path: Path) -> None:
    done = run_cli("--recipe", str(_recipe(tmp_path, ["state", "rate"])), "--validate", cwd=tmp_path)
    assert done.returncode == 2 and "evaluation.source.unbatched" in done.stderr and "['rate']" in done.stderr
