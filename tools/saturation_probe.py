"""Does onnxruntime's integer path saturate u8 x s8 pair sums on this CPU?

AVX2 without VNNI multiplies u8 x s8 with vpmaddubsw, which adds each ADJACENT PAIR of products into a
saturating int16: 255*127 + 255*127 = 64770 becomes 32767. A single 255*127 product does not show it.
VNNI (vpdpbusd) adds four products into an int32: exact. This script builds tiny models whose every
reduction pair is at the extremes (x = 255, w = +127 or -128, and random near-extreme signs), runs
them in onnxruntime and says, per operator path, which of two predictions the output matches:
the exact int32 sum, or the pairwise-saturated one.

Paths: MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv (dense 3x3, 1x1, depthwise 3x3/5x5,
per-tensor and per-channel weights), and the QDQ form of Conv/MatMul, which onnxruntime fuses into
QLinearConv/QLinearMatMul at ORT_ENABLE_ALL and computes in float at ORT_DISABLE_ALL.

    python tools/saturation_probe.py
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
CHANNELS = 64  # reduction length of the 1x1 conv / matmul; enough pairs to make saturation obvious


@dataclass(frozen=True)
class Case:
    name: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    exact: (
        np.ndarray
    )  # what an exact int32 accumulator gives (after the op's own requantization)
    saturated: np.ndarray  # what pairwise int16 saturation gives


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text()
    return sorted(
        set(
            re.findall(
                r"\b(avx512_vnni|avx_vnni|avx512bw|avx512f|avx2|amx_int8)\b", text
            )
        )
    )


def matmul_reference(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact and pairwise-saturated a @ b for a [M, K] u8, b [K, N] s8 (K even)."""
    products = (
        a.astype(np.int64)[:, :, None] * b.astype(np.int64)[None, :, :]
    )  # M, K, N
    exact = products.sum(axis=1)
    pairs = products.reshape(products.shape[0], -1, 2, products.shape[2]).sum(axis=2)
    saturated = np.clip(pairs, -32768, 32767).sum(axis=1)
    return exact, saturated


def requantize(
    acc: np.ndarray, multiplier: np.ndarray | float, zero_point: int, dtype: type
) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.rint(acc * multiplier) + zero_point, info.min, info.max).astype(
        dtype
    )


def const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def build(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    output: onnx.ValueInfoProto,
    inits: list[onnx.TensorProto],
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "probe", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def weights_patterns(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """Columns: all +127, all -128, random signs at |w| in [100, 127], and small random weights."""
    w = np.empty((k, n), np.int8)
    w[:, 0] = 127
    w[:, 1] = -128
    w[:, 2:-1] = (
        rng.choice([-1, 1], size=(k, n - 3)) * rng.integers(100, 128, size=(k, n - 3))
    ).astype(np.int8)
    w[:, -1] = rng.integers(-20, 21, size=k).astype(np.int8)
    return w


def activations(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    a = rng.integers(200, 256, size=(m, k)).astype(np.uint8)
    a[0] = 255
    return a


def matmul_integer_case(rng: np.random.Generator) -> Case:
    a, b = activations(rng, 4, CHANNELS), weights_patterns(rng, CHANNELS, 8)
    exact, saturated = matmul_reference(a, b)
    model = build(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        [helper.make_tensor_value_info("a", TensorProto.UINT8, list(a.shape))],
        helper.make_tensor_value_info("y", TensorProto.INT32, list(exact.shape)),
        [const("b", b)],
    )
    return Case(
        "MatMulInteger u8xs8",
        model,
        {"a": a},
        exact.astype(np.int32),
        saturated.astype(np.int32),
    )


def qlinear_matmul_case(rng: np.random.Generator) -> Case:
    a, b = activations(rng, 4, CHANNELS), weights_patterns(rng, CHANNELS, 8)
    exact, saturated = matmul_reference(a, b)
    y_scale = float(np.abs(exact).max()) / 127.0  # x_scale = w_scale = 1
    model = build(
        [
            helper.make_node(
                "QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"]
            )
        ],
        [helper.make_tensor_value_info("a", TensorProto.UINT8, list(a.shape))],
        helper.make_tensor_value_info("y", TensorProto.UINT8, list(exact.shape)),
        [
            const("as", np.array(1.0, np.float32)),
            const("az", np.array(0, np.uint8)),
            const("b", b),
            const("bs", np.array(1.0, np.float32)),
            const("bz", np.array(0, np.int8)),
            const("ys", np.array(y_scale, np.float32)),
            const("yz", np.array(128, np.uint8)),
        ],
    )
    return Case(
        "QLinearMatMul u8xs8",
        model,
        {"a": a},
        requantize(exact, 1 / y_scale, 128, np.uint8),
        requantize(saturated, 1 / y_scale, 128, np.uint8),
    )


def conv_reference(
    x: np.ndarray, w: np.ndarray, group: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact and pair-saturated conv (no padding, stride 1) by im2col with K ordered (c, ky, kx), as MLAS packs it."""
    _, _, h, wd = x.shape
    m, cg, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    exact = np.zeros((1, m, oh, ow), np.int64)
    saturated = np.zeros_like(exact)
    per_group = m // group
    for g in range(group):
        xs = x[0, g * cg : (g + 1) * cg].astype(np.int64)
        cols = np.stack(
            [
                xs[:, i : i + kh, j : j + kw].reshape(-1)
                for i in range(oh)
                for j in range(ow)
            ]
        )  # P, K
        wg = (
            w[g * per_group : (g + 1) * per_group]
            .reshape(per_group, -1)
            .T.astype(np.int64)
        )  # K, per_group
        if cols.shape[1] % 2:  # odd K: the last product pairs with a zero pad
            cols = np.pad(cols, ((0, 0), (0, 1)))
            wg = np.pad(wg, ((0, 1), (0, 0)))
        e, s = matmul_reference(cols, wg)
        exact[0, g * per_group : (g + 1) * per_group] = e.T.reshape(per_group, oh, ow)
        saturated[0, g * per_group : (g + 1) * per_group] = s.T.reshape(
            per_group, oh, ow
        )
    return exact, saturated


def conv_weights(
    rng: np.random.Generator, out_channels: int, in_per_group: int, k: int
) -> np.ndarray:
    flat = weights_patterns(rng, in_per_group * k * k, out_channels)
    return flat.T.reshape(out_channels, in_per_group, k, k).copy()


def conv_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    shapes = [
        ("dense 1x1", CHANNELS, 8, 1, 1),
        ("dense 3x3", 16, 8, 3, 1),
        ("depthwise 3x3", 16, 16, 3, 16),
        ("depthwise 5x5", 16, 16, 5, 16),
    ]
    for label, c, m, k, group in shapes:
        x = rng.integers(200, 256, size=(1, c, k + 3, k + 3)).astype(np.uint8)
        x[0, :, 0, :] = 255
        w = (
            conv_weights(rng, m, c // group, k)
            if group == 1
            else np.concatenate([conv_weights(rng, 4, 1, k)] * (m // 4))
        )
        exact, saturated = conv_reference(x, w, group)
        attrs = {"group": group, "kernel_shape": [k, k]}
        x_info = helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))
        cases.append(
            Case(
                f"ConvInteger {label}",
                build(
                    [helper.make_node("ConvInteger", ["x", "w"], ["y"], **attrs)],
                    [x_info],
                    helper.make_tensor_value_info(
                        "y", TensorProto.INT32, list(exact.shape)
                    ),
                    [const("w", w)],
                ),
                {"x": x},
                exact.astype(np.int32),
                saturated.astype(np.int32),
            )
        )
        for per_channel in (False, True):
            y_scale = float(np.abs(exact).max()) / 127.0
            w_scale = (
                np.ones(m, np.float32) if per_channel else np.array(1.0, np.float32)
            )
            w_zero = np.zeros(m, np.int8) if per_channel else np.array(0, np.int8)
            inits = [
                const("xs", np.array(1.0, np.float32)),
                const("xz", np.array(0, np.uint8)),
                const("w", w),
                const("ws", w_scale),
                const("wz", w_zero),
                const("ys", np.array(y_scale, np.float32)),
                const("yz", np.array(128, np.uint8)),
            ]
            cases.append(
                Case(
                    f"QLinearConv {label} {'per-channel' if per_channel else 'per-tensor'}",
                    build(
                        [
                            helper.make_node(
                                "QLinearConv",
                                ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
                                ["y"],
                                **attrs,
                            )
                        ],
                        [x_info],
                        helper.make_tensor_value_info(
                            "y", TensorProto.UINT8, list(exact.shape)
                        ),
                        inits,
                    ),
                    {"x": x},
                    requantize(exact, 1 / y_scale, 128, np.uint8),
                    requantize(saturated, 1 / y_scale, 128, np.uint8),
                )
            )
            cases.append(
                qdq_conv_case(
                    label, x, w, attrs, y_scale, exact, saturated, per_channel
                )
            )
    return cases


def qdq_conv_case(
    label: str,
    x: np.ndarray,
    w: np.ndarray,
    attrs: dict,
    y_scale: float,
    exact: np.ndarray,
    saturated: np.ndarray,
    per_channel: bool,
) -> Case:
    """float in -> Q(u8) -> DQ -> Conv(DQ(s8 w)) -> Q(u8) -> DQ -> float out: what quantize_static writes."""
    m = w.shape[0]
    w_axis = {"axis": 0} if per_channel else {}
    inits = [
        const("xs", np.array(1.0, np.float32)),
        const("xz", np.array(0, np.uint8)),
        const("wq", w),
        const(
            "ws", np.ones(m, np.float32) if per_channel else np.array(1.0, np.float32)
        ),
        const("wz", np.zeros(m, np.int8) if per_channel else np.array(0, np.int8)),
        const("ys", np.array(y_scale, np.float32)),
        const("yz", np.array(128, np.uint8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["xf", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], **w_axis),
        helper.make_node("Conv", ["xd", "wd"], ["yf"], **attrs),
        helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    model = build(
        nodes,
        [helper.make_tensor_value_info("xf", TensorProto.FLOAT, list(x.shape))],
        helper.make_tensor_value_info("y", TensorProto.FLOAT, list(exact.shape)),
        inits,
    )
    dequant = lambda acc: (
        (requantize(acc, 1 / y_scale, 128, np.uint8).astype(np.float32) - 128)
        * np.float32(y_scale)
    )
    return Case(
        f"QDQ Conv {label} {'per-channel' if per_channel else 'per-tensor'}",
        model,
        {"xf": x.astype(np.float32)},
        dequant(exact),
        dequant(saturated),
    )


def qdq_matmul_case(rng: np.random.Generator) -> Case:
    a, b = activations(rng, 4, CHANNELS), weights_patterns(rng, CHANNELS, 8)
    exact, saturated = matmul_reference(a, b)
    y_scale = float(np.abs(exact).max()) / 127.0
    inits = [
        const("as", np.array(1.0, np.float32)),
        const("az", np.array(0, np.uint8)),
        const("bq", b),
        const("bs", np.array(1.0, np.float32)),
        const("bz", np.array(0, np.int8)),
        const("ys", np.array(y_scale, np.float32)),
        const("yz", np.array(128, np.uint8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["af", "as", "az"], ["aq"]),
        helper.make_node("DequantizeLinear", ["aq", "as", "az"], ["ad"]),
        helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"]),
        helper.make_node("MatMul", ["ad", "bd"], ["yf"]),
        helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    model = build(
        nodes,
        [helper.make_tensor_value_info("af", TensorProto.FLOAT, list(a.shape))],
        helper.make_tensor_value_info("y", TensorProto.FLOAT, list(exact.shape)),
        inits,
    )
    dequant = lambda acc: (
        (requantize(acc, 1 / y_scale, 128, np.uint8).astype(np.float32) - 128)
        * np.float32(y_scale)
    )
    return Case(
        "QDQ MatMul",
        model,
        {"af": a.astype(np.float32)},
        dequant(exact),
        dequant(saturated),
    )


LEVELS = {
    "DISABLE_ALL": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "ENABLE_ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def run(
    case: Case, level: str, configs: dict[str, str], tmp: Path
) -> tuple[np.ndarray, list[str]]:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = 1
    optimized = tmp / "optimized.onnx"
    options.optimized_model_filepath = str(optimized)
    for key, value in configs.items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(
        case.model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    output = session.run(None, case.feeds)[0]
    ops = [node.op_type for node in onnx.load(optimized).graph.node]
    return output, ops


def verdict(output: np.ndarray, case: Case) -> str:
    tolerance = (
        1.0
        if output.dtype == np.uint8
        else (
            float(np.abs(case.exact).max()) / 127.0 * 1.01
            if output.dtype == np.float32
            else 0
        )
    )
    close: Callable[[np.ndarray], bool] = lambda ref: bool(
        np.all(np.abs(output.astype(np.float64) - ref.astype(np.float64)) <= tolerance)
    )
    distinguishable = not np.allclose(
        case.exact.astype(np.float64),
        case.saturated.astype(np.float64),
        atol=tolerance * 2,
    )
    if close(case.exact):
        return "exact" if distinguishable else "exact (case not discriminating)"
    if close(case.saturated):
        return "PAIR-SATURATED"
    return f"neither (max |err| vs exact {np.abs(output.astype(np.float64) - case.exact).max():.3g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/saturation_probe"))
    args = parser.parse_args()
    args.tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}; cpu flags: {' '.join(cpu_flags())}")
    cases = [
        matmul_integer_case(rng),
        qlinear_matmul_case(rng),
        qdq_matmul_case(rng),
        *conv_cases(rng),
    ]
    config_sets = {
        "default": {},
        "x64quantprecision=1": {"session.x64quantprecision": "1"},
    }
    print(
        f"{'case':48s} {'level':12s} {'config':20s} {'ops after optimisation':38s} verdict"
    )
    for case in cases:
        for level in LEVELS:
            if not case.name.startswith("QDQ") and level == "DISABLE_ALL":
                continue
            for config_name, configs in config_sets.items():
                output, ops = run(case, level, configs, args.tmp)
                print(
                    f"{case.name:48s} {level:12s} {config_name:20s} {','.join(dict.fromkeys(ops)):38s} {verdict(output, case)}"
                )


if __name__ == "__main__":
    main()
