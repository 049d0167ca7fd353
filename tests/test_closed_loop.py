"""Closed-loop evaluation of a stateful model (issue 15 part 1): with `state: {new_state: state}` every
step of a sequence feeds the model its OWN previous state. A real dynamic-INT8 variant of a tiny
recurrent cell, whose small weight error builds up through the state, fails closed-loop where
teacher forcing (the variant fed FP32's state) passes it; bad declarations are exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.checks import check_inputs
from quant.errors import InputError
from quant.evaluate import evaluate_variant, run_reference
from quant.gates import judge_all, overall_verdict
from quant.recipe.loader import load_recipe
from tests.conftest import run_cli, write_recipe

WIDTH, STEPS, SEQUENCES = 8, 100, 3
MAX_ABS = 0.1  # the gate: one step of the INT8 cell is well within it, a hundred steps of its drift are not


def recurrent_cell() -> onnx.ModelProto:
    """new_state = state R + x W (R orthogonal: the state neither decays nor explodes); y = tanh(new_state)."""
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(WIDTH, WIDTH)))
    weights = [
        numpy_helper.from_array(rotation.astype(np.float32), "r"),
        numpy_helper.from_array(rng.normal(0, 0.3, (WIDTH, WIDTH)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("MatMul", ["state", "r"], ["carried"], name="recur"),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="project"),
        helper.make_node("Add", ["carried", "h"], ["new_state"], name="step"),
        helper.make_node("Tanh", ["new_state"], ["y"], name="out"),
        helper.make_node("ReduceSumSquare", ["new_state"], ["energy"], name="energy", axes=[1]),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, WIDTH]) for n in ("x", "state")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, WIDTH]) for n in ("y", "new_state")]
    outputs.append(helper.make_tensor_value_info("energy", TensorProto.FLOAT, [1, 1]))
    model = helper.make_model(helper.make_graph(nodes, "cell", inputs, outputs, weights), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _data(root: Path) -> None:
    """Sequences of STEPS rows: an input burst in the first five steps, then the state alone carries the signal."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(SEQUENCES, STEPS, WIDTH)).astype(np.float32) * (np.arange(STEPS) < 5)[None, :, None]
    np.savez(
        root / "eval.npz",
        x=x.reshape(-1, WIDTH),
        state=np.zeros((SEQUENCES * STEPS, 1, WIDTH), np.float32),  # only the first step's is fed; later ones come from the model
        seq=np.repeat(np.arange(SEQUENCES), STEPS),
    )


def _recipe(root: Path, **changes: Any) -> Path:
    onnx.save(recurrent_cell(), str(root / "cell.onnx"))
    _data(root)
    recipe: dict[str, Any] = {
        "name": "cell",
        "model": {"path": "cell.onnx"},
        "outputs": {"y": {}, "new_state": {}},
        "state": {"new_state": "state"},
        "evaluation": {"source": {"npz": "eval.npz", "unbatched": ["state"], "sequence": "seq"}},
        "variants": {"d": {"method": "dynamic_int8", "op_types": ["MatMul"]}},
        "gates": [{"metric": "max_abs", "max": MAX_ABS, "output": "y"}],
        "bench": {"samples": 1, "rounds": 3, "warmup": 0, "threads": 1},
    }
    recipe.update(changes)
    return write_recipe(root, recipe)


def test_error_growing_through_the_state_fails_closed_loop_where_teacher_forcing_passes(tmp_path: Path) -> None:
    recipe_path = _recipe(tmp_path)
    done = run_cli("--recipe", str(recipe_path), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    variant = json.loads((tmp_path / "run" / "results.json").read_text())["variants"]["d"]
    closed_max_abs = variant["metrics"]["y"]["max_abs"]
    assert variant["status"] == "failed" and closed_max_abs > MAX_ABS
    assert variant["build"]["quantized_ops"], "the variant is a real INT8 model"
    assert len(variant["distributions"]["y"]["cosine"]) == SEQUENCES  # one sample per sequence, not per step

    # The same built variant, teacher-forced: fed FP32's state at every step, it passes the same gate.
    inputs = check_inputs(load_recipe(str(recipe_path)))
    reference = run_reference(
        inputs.model.path, inputs.model.sha256, inputs.evaluation, inputs.model.inputs, "", tmp_path / "cache", 1, state=inputs.recipe.state
    )
    built = tmp_path / "run" / "variants" / "d.onnx"
    forced = evaluate_variant(built, reference, inputs.evaluation, inputs.model.inputs, inputs.recipe.outputs, {}, 1, teacher_forced=True)
    looped = evaluate_variant(built, reference, inputs.evaluation, inputs.model.inputs, inputs.recipe.outputs, {}, 1)
    forced_metrics = {name: c.summary() for name, c in forced.items()}
    looped_metrics = {name: c.summary() for name, c in looped.items()}
    assert overall_verdict(judge_all(inputs.recipe.gates, forced_metrics, {}, inputs.recipe.outputs)) == "passed"
    assert overall_verdict(judge_all(inputs.recipe.gates, looped_metrics, {}, inputs.recipe.outputs)) == "failed"
    assert looped_metrics["y"]["max_abs"] == pytest.approx(closed_max_abs)
    assert looped_metrics["y"]["max_abs"] > 3 * forced_metrics["y"]["max_abs"]


def test_fp32_reference_is_fed_its_own_state(tmp_path: Path) -> None:
    """The stored FP32 outputs are FP32's closed loop: after the burst the state still carries it (a
    teacher-forced or as-stored run would restart from the zeros in the file at every step)."""
    inputs = check_inputs(load_recipe(str(_recipe(tmp_path))))
    reference = run_reference(
        inputs.model.path, inputs.model.sha256, inputs.evaluation, inputs.model.inputs, "", tmp_path / "cache", 1, state=inputs.recipe.state
    )
    last = np.load(reference.folder / f"{STEPS - 1:06d}.npz")["o1"]
    assert np.linalg.norm(last) > 1.0  # the rotation keeps the state's norm; zeros in, x = 0 would give 0


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"state": {"new_stat": "state"}}, "state.new_stat", "its outputs are ['y', 'new_state', 'energy']"),
        ({"state": {"energy": "state"}}, "state.energy", "the shapes differ"),
        ({"state": {"new_state": "stat"}}, "state.new_state", "its inputs are ['x', 'state']"),
        ({"state": {"y": "x", "new_state": "x"}}, "state", "fed by more than one output"),
        ({"evaluation": {"source": {"npz": "eval.npz", "unbatched": ["state"]}}}, "evaluation.source.sequence", "needs sequences"),
        ({"evaluation": {"source": {"npz": "eval.npz", "unbatched": ["state"], "sequence": "sq"}}}, "evaluation.source.sequence", "no array 'sq'"),
    ],
)
def test_bad_state_declarations_are_refused_naming_the_field(tmp_path: Path, changes: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(InputError) as refused:
        check_inputs(load_recipe(str(_recipe(tmp_path, **changes))))
    assert refused.value.field == field and says in str(refused.value), str(refused.value)


def test_a_bad_state_declaration_is_exit_2_at_validate(tmp_path: Path) -> None:
    done = run_cli("--recipe", str(_recipe(tmp_path, state={"energy": "state"})), "--validate", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "state.energy" in done.stderr and "the shapes differ" in done.stderr
