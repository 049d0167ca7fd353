"""The sensitivity ranking compares tensors in groups within a memory budget, and ranks exactly as in one group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from quant.recipe.schema import Fallback
from quant.sensitivity import RANKING_MEMORY_MB, _ChannelErrors, _exposing, _with_outputs, rank_nodes, tensor_groups

CHANNELS = 8


def _conv_chain(depth: int = 6) -> onnx.ModelProto:
    """x (1, 3, H, W) through `depth` 3x3 Conv+Relu blocks: H and W free, so each sample may differ in size."""
    rng = np.random.default_rng(0)
    nodes, weights, previous, channels = [], [], "x", 3
    for i in range(depth):
        weight = rng.normal(0, 0.4, (CHANNELS, channels, 3, 3)).astype(np.float32)
        weight[0] *= 30 if i == 2 else 1  # one channel far wider than the rest: conv2 adds the most error
        weights += [numpy_helper.from_array(weight, f"w{i}"), numpy_helper.from_array(rng.normal(0, 0.1, CHANNELS).astype(np.float32), f"b{i}")]
        nodes += [
            helper.make_node("Conv", [previous, f"w{i}", f"b{i}"], [f"conv{i}_out"], name=f"conv{i}", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"conv{i}_out"], [f"relu{i}_out"], name=f"relu{i}"),
        ]
        previous, channels = f"relu{i}_out", CHANNELS
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, CHANNELS, "h", "w"])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, np.ndarray]]]:
    folder = tmp_path_factory.mktemp("ranking")
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(0, 1, (1, 3, h, w)).astype(np.float32)} for h, w in ((16, 24), (32, 16), (24, 24))]
    float_path, qdq_path = folder / "float.onnx", folder / "qdq.onnx"
    onnx.save(_conv_chain(), str(float_path))
    quantize_static(
        str(float_path),
        str(qdq_path),
        _Reader(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return float_path, qdq_path, feeds


def _groups_said(said: list[str]) -> int:
    (line,) = [s for s in said if s.startswith("ranking:")]
    return int(line.split(" in ")[1].split()[0])


def test_ranking_in_several_groups_is_the_ranking_in_one(models: tuple[Path, Path, list[dict[str, np.ndarray]]]) -> None:
    float_path, qdq_path, feeds = models
    one_said: list[str] = []
    one = rank_nodes(float_path, qdq_path, feeds, ["Conv"], memory_mb=1e6, log=one_said.append)
    # A compared tensor: 8 channels of 24 x 24 float32 on the largest sample = 18 KiB; each Conv compares its input and output.
    grouped_said: list[str] = []
    grouped = rank_nodes(float_path, qdq_path, feeds, ["Conv"], memory_mb=50 / 1024, log=grouped_said.append)
    assert _groups_said(one_said) == 1 and _groups_said(grouped_said) > 2
    assert len(one) == 6 and one[0].node == "conv2"  # every Conv ranked, and the wide channel's found
    assert grouped == one  # same nodes, same order, the very same errors


def test_groups_fit_the_budget_on_the_largest_sample_and_keep_the_order(models: tuple[Path, Path, list[dict[str, np.ndarray]]]) -> None:
    float_path, _, feeds = models
    model = onnx.load(str(float_path))
    names = [o for n in model.graph.node for o in n.output]
    tensor_kib = CHANNELS * 24 * 24 * 4 / 1024  # on the largest sample (24 x 24 pixels; 32 x 16 is the tallest but smaller)
    groups = tensor_groups(model, names, feeds, memory_mb=2.5 * tensor_kib / 1024)
    assert [name for group in groups for name in group] == names
    assert [len(g) for g in groups] == [2] * 6  # two fit 2.5 tensors' worth, three do not
    assert tensor_groups(model, names, feeds, memory_mb=tensor_kib / 2 / 1024) == [[n] for n in names]  # larger than the budget: alone
    assert tensor_groups(model, names, feeds, memory_mb=12 * tensor_kib / 1024) == [names]


@pytest.mark.parametrize(("shape", "axis"), [((2, 6, 5, 7), 1), ((3, 11, 6), 2)])  # NCHW: channels on axis 1; (N, T, C): the last
def test_errors_summed_a_few_channels_at_a_time_are_the_whole_tensors_to_the_bit(shape: tuple[int, ...], axis: int) -> None:
    rng = np.random.default_rng(2)
    channels = shape[axis]
    per_channel_noise = (3.0 ** np.arange(channels)).reshape([channels if i == axis else 1 for i in range(len(shape))])
    whole, chunked = _ChannelErrors(chunk_values=10**9), _ChannelErrors(chunk_values=2 * 5 * 7)  # 2 of 6 NCHW channels at a time
    for _ in range(2):
        reference = rng.normal(0, 1, shape).astype(np.float32)
        candidate = (reference + 0.01 * per_channel_noise * rng.normal(0, 1, shape)).astype(np.float32)
        whole.add(reference, candidate)
        chunked.add(reference, candidate)
    assert whole.signal is not None and chunked.signal is not None and whole.noise is not None and chunked.noise is not None
    assert whole.signal.shape == (channels,)
    assert whole.signal.tobytes() == chunked.signal.tobytes() and whole.noise.tobytes() == chunked.noise.tobytes()
    assert np.all(np.diff(whole.noise) > 0)  # the noise grows with the channel: each channel's sums stayed in its place


def test_the_recipes_default_budget_is_the_rankings() -> None:
    assert Fallback().ranking_memory_mb == RANKING_MEMORY_MB


def test_a_group_read_inside_control_flow_still_has_its_producers(tmp_path: Path) -> None:
    """An If's branches read `r` from the outer graph: cutting the model at the If's output must keep r's Relu."""
    branch = {
        sign: helper.make_graph(
            [helper.make_node("Add" if sign > 0 else "Sub", ["r", "one"], [f"out{sign}"])],
            f"branch{sign}",
            [],
            [helper.make_tensor_value_info(f"out{sign}", TensorProto.FLOAT, None)],
        )
        for sign in (1, -1)
    }
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch[1], else_branch=branch[-1]),
            helper.make_node("Mul", ["y", "one"], ["z"], name="mul"),
        ],
        "flow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "one")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "flow.onnx"))
    cut = _exposing(_with_outputs(tmp_path / "flow.onnx", ["r", "y"]), ["y"], tmp_path / "cut.onnx")
    x = np.array([-1, 0, 2, 3], np.float32)
    (y,) = ort.InferenceSession(str(cut), providers=["CPUExecutionProvider"]).run(["y"], {"x": x, "cond": np.array(True)})
    assert y.tolist() == [1, 1, 3, 4]
