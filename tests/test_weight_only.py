"""weight_only: MatMul -> MatMulNBits with onnxruntime's MatMulNBitsQuantizer, per-node overrides, recipe errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.errors import RecipeError
from quant.methods.base import BuildContext, builder_for
from quant.model import file_sha256
from quant.precision import nothing_quantized
from quant.recipe.loader import load_recipe
from quant.recipe.schema import WeightOnlyOptions
from tests.conftest import base_recipe, run_cli, write_recipe

DIM, HIDDEN, VOCAB = 64, 128, 32


def tiny_decoder_block(seed: int = 0) -> onnx.ModelProto:
    """x[1,T,64] -> fc1 -> Gelu-ish (Relu) -> fc2 -> + x -> lm_head [1,T,32]; one MatMul left unnamed."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(0, 0.2, (DIM, HIDDEN)),
        "w2": rng.normal(0, 0.1, (HIDDEN, DIM)),
        "w3": rng.normal(0, 0.1, (DIM, DIM)),
        "w_head": rng.normal(0, 0.3, (DIM, VOCAB)),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["a1"], name="act"),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="fc2"),
        helper.make_node("MatMul", ["h2", "w3"], ["h3"]),  # no name: exporters leave some out
        helper.make_node("Add", ["h3", "x"], ["r"], name="residual"),
        helper.make_node("MatMul", ["r", "w_head"], ["logits"], name="lm_head"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_decoder_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", DIM])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "T", VOCAB])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "block.onnx"
    onnx.save(tiny_decoder_block(), str(path))
    return path


def build(model_path: Path, tmp_path: Path, **options: Any) -> tuple[Path, dict[str, Any]]:
    variant = WeightOnlyOptions.model_validate({"method": "weight_only", **options})
    context = BuildContext(
        model_path=model_path, model_sha256=file_sha256(model_path), model_inputs={"x": [1, "T", DIM]},
        work_dir=tmp_path / "work", cache_dir=tmp_path / "cache", log=lambda _: None,
    )
    out = tmp_path / "out" / "variant.onnx"
    result = builder_for(variant)(variant, context, out)
    return result.path, result.details


def nodes_by_output(path: Path) -> dict[str, onnx.NodeProto]:
    return {node.output[0]: node for node in onnx.load(str(path)).graph.node}


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def relative_error(path: Path, reference_path: Path) -> float:
    x = np.random.default_rng(5).normal(0, 1, (1, 7, DIM)).astype(np.float32)
    reference = run(reference_path, x)
    return float(np.linalg.norm(run(path, x) - reference) / np.linalg.norm(reference))


def test_int4_blocks_replace_every_matmul_and_stay_close(model_path: Path, tmp_path: Path) -> None:
    path, details = build(model_path, tmp_path, bits=4, block_size=32)
    nodes = nodes_by_output(path)
    for output in ("h1", "h2", "h3", "logits"):
        assert nodes[output].op_type == "MatMulNBits", output
        assert (attrs(nodes[output])["bits"], attrs(nodes[output])["block_size"]) == (4, 32)
    assert details["matmul_nbits"] == {"bits=4 block=32": 4}
    assert relative_error(path, model_path) < 0.15
    assert path.stat().st_size < model_path.stat().st_size / 4


def test_excluded_node_stays_matmul_and_override_gets_its_own_bits(model_path: Path, tmp_path: Path) -> None:
    path, details = build(model_path, tmp_path, bits=4, block_size=32, exclude_nodes=["fc1"], overrides={"lm_head": {"bits": 8, "block_size": 64}})
    nodes = nodes_by_output(path)
    assert nodes["h1"].op_type == "MatMul"
    assert (nodes["logits"].op_type, attrs(nodes["logits"])["bits"], attrs(nodes["logits"])["block_size"]) == ("MatMulNBits", 8, 64)
    assert [(attrs(nodes[o])["bits"], attrs(nodes[o])["block_size"]) for o in ("h2", "h3")] == [(4, 32), (4, 32)]
    assert details["matmul_nbits"] == {"bits=8 block=64": 1, "bits=4 block=32": 2, "float MatMul": 1}


def test_eight_bits_are_closer_to_fp32_than_four(model_path: Path, tmp_path: Path) -> None:
    int8, _ = build(model_path, tmp_path / "8", bits=8, block_size=32)
    int4, _ = build(model_path, tmp_path / "4", bits=4, block_size=32)
    assert relative_error(int8, model_path) < 0.02
    assert relative_error(int8, model_path) < relative_error(int4, model_path) / 4


@pytest.mark.parametrize("algorithm", ["rtn", "k_quant"])
def test_neural_compressor_algorithms_build_matmulnbits_with_overrides(model_path: Path, tmp_path: Path, algorithm: str) -> None:
    path, details = build(model_path, tmp_path, algorithm=algorithm, bits=4, block_size=32, accuracy_level=4, overrides={"lm_head": {"bits": 8}})
    nodes = nodes_by_output(path)
    assert attrs(nodes["logits"])["bits"] == 8 and attrs(nodes["h1"])["bits"] == 4
    assert attrs(nodes["h1"])["accuracy_level"] == 4
    assert details["matmul_nbits"] == {"bits=8 block=32": 1, "bits=4 block=32": 3}
    assert relative_error(path, model_path) < 0.15


def test_symmetric_blocks_have_no_zero_points(model_path: Path, tmp_path: Path) -> None:
    asymmetric, _ = build(model_path, tmp_path / "a", symmetric=False)
    symmetric, _ = build(model_path, tmp_path / "s", symmetric=True)
    assert len(nodes_by_output(asymmetric)["h1"].input) == 4  # A, B, scales, zero points
    assert len(nodes_by_output(symmetric)["h1"].input) == 3


def test_unknown_node_name_is_a_recipe_error_naming_the_field(model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as caught:
        build(model_path, tmp_path, overrides={"lm_haed": {"bits": 8}})
    assert caught.value.field == "overrides" and "lm_haed" in str(caught.value)


@pytest.mark.parametrize(
    ("variant", "field", "words"),
    [
        ({"method": "weight_only", "bits": 3}, "variants.w.bits", "4 or 8"),
        ({"method": "weight_only", "block_size": 24}, "variants.w.block_size", "power of two"),
        ({"method": "weight_only", "algorithm": "gptq"}, "variants.w.algorithm", "'default', 'rtn', 'k_quant' or 'hqq'"),
        ({"method": "weight_only", "algorithm": "k_quant", "symmetric": True}, "variants.w", "asymmetric"),
        ({"method": "weight_only", "exclude_nodes": ["a"], "overrides": {"a": {"bits": 8}}}, "variants.w", "both excluded and overridden"),
        ({"method": "weight_only", "overrides": {"a": {"bits": 2}}}, "variants.w.overrides.a.bits", "4 or 8"),
    ],
)
def test_bad_options_are_refused_naming_the_field(tmp_path: Path, model_path: Path, variant: dict[str, Any], field: str, words: str) -> None:
    recipe = base_recipe(model_path, tmp_path, tmp_path, variants={"w": variant})
    with pytest.raises(RecipeError) as caught:
        load_recipe(str(write_recipe(tmp_path, recipe)))
    assert caught.value.field == field
    assert words in str(caught.value)


def test_cli_exits_2_on_an_override_for_a_node_the_model_lacks(workspace: dict[str, Path]) -> None:
    variant = {"method": "weight_only", "overrides": {"nope": {"bits": 8}}}
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants={"w": variant})
    done = run_cli("--recipe", str(write_recipe(workspace["root"], recipe)), cwd=workspace["root"])
    assert done.returncode == 2, done.stderr[-1500:]
    assert "overrides" in done.stderr and "nope" in done.stderr
    assert not (workspace["root"] / "releases").exists()


def test_a_model_without_matmul_weights_is_reported_as_nothing_quantized(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"], name="activations_only")]
    graph = helper.make_graph(
        nodes, "no_weights",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [DIM, DIM]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [DIM, DIM])],
    )
    source = tmp_path / "no_weights.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    path, details = build(source, tmp_path)
    assert details["quantized_ops"] == {}
    assert "weight_only quantized no node" in (nothing_quantized("weight_only", source, path) or "")


def test_cli_promotes_a_weight_only_variant_of_the_tiny_recogniser(workspace: dict[str, Path]) -> None:
    variant = {"method": "weight_only", "bits": 8, "block_size": 16, "symmetric": True}
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants={"w8": variant})
    done = run_cli("--recipe", str(write_recipe(workspace["root"], recipe)), cwd=workspace["root"])
    assert done.returncode == 0, done.stderr[-1500:]
    released = next((workspace["root"] / "releases" / "tiny").glob("v*/w8.onnx"))
    assert [n.op_type for n in onnx.load(str(released)).graph.node].count("MatMulNBits") == 1
