"""Bias correction for static INT8: shift each quantized layer's float bias by the mean error quantization adds to
its output, measured on the calibration samples, then quantize again.

For a quantized Conv (or a MatMul whose output goes only to an Add with a constant), the QDQ graph computes
conv(x̂, Ŵ) where the float model computes conv(x, W): x̂ is the input after its Q/DQ pair, Ŵ the dequantized
weight. The error's mean per output channel, E[conv(x, W) − conv(x̂, Ŵ)], is a systematic shift (weight rounding,
percentile clipping of the input) that the bias can absorb. It is measured locally, layer by layer, inside the QDQ
graph on its own activations, so correcting every layer at once does not count an upstream error twice.
With error "weights" only the weights' rounding is measured, E[conv(x, W) − conv(x, Ŵ)] (the classic correction).

The shift goes into the FP32 model's bias initializer *before* quantizing: onnxruntime then quantizes that bias as
usual (int32, scale = input scale x weight scale), and the same cached activation ranges are reused.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from quant.data.sources import Feeds
from quant.model import default_opset, load_proto, save_model

_SUFFIX = "__bias_correction"


@dataclass(frozen=True)
class _Layer:
    """One quantized layer whose bias can absorb its mean error."""

    bias: str  # the float model's bias initializer
    sum_output: str  # aux output: sum over every other axis of (float - quantized)
    shape_output: str  # aux output: shape of the difference (how many values were summed per channel)


@dataclass(frozen=True)
class BiasShifts:
    """Per float bias initializer: the mean error to add, and over how many samples it was measured."""

    shifts: dict[str, np.ndarray]
    samples: int

    def describe(self) -> dict[str, object]:
        largest = max((float(np.abs(s).max()) for s in self.shifts.values()), default=0.0)
        return {"layers": len(self.shifts), "samples": self.samples, "largest_shift": round(largest, 6)}


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _before_qdq(name: str, producers: dict[str, onnx.NodeProto]) -> str:
    """The float tensor a DequantizeLinear(QuantizeLinear(x)) chain started from (the tensor itself when it has none)."""
    dq = producers.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return name
    q = producers.get(dq.input[0])
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else name


def _dequantized_weight(name: str, producers: dict[str, onnx.NodeProto], initializers: set[str]) -> bool:
    dq = producers.get(name)
    return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in initializers


def _layers(float_graph: onnx.GraphProto, qdq_graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, str, str, int]]:
    """(QDQ node, its float weight initializer, the float bias initializer, output channel axis) for every quantized
    Conv with a bias and every quantized MatMul feeding only an Add of a constant; biases shared by two nodes are left alone."""
    float_nodes = {n.name: n for n in float_graph.node}
    float_inits = {i.name: i for i in float_graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in float_graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = _producers(qdq_graph)
    qdq_inits = {i.name for i in qdq_graph.initializer}
    found = []
    for node in qdq_graph.node:
        original = float_nodes.get(node.name)
        if original is None or node.op_type not in ("Conv", "MatMul") or len(node.input) < 2:
            continue
        if not _dequantized_weight(node.input[1], producers, qdq_inits) or original.input[1] not in float_inits:
            continue
        if node.op_type == "Conv":
            bias = original.input[2] if len(original.input) > 2 else ""
            axis = 1
        else:
            after = consumers.get(original.output[0], [])
            if len(after) != 1 or after[0].op_type != "Add":
                continue
            bias = next((i for i in after[0].input if i != original.output[0]), "")
            axis = -1
        if bias not in float_inits or len(consumers.get(bias, [])) != 1:
            continue
        columns = numpy_helper.to_array(float_inits[original.input[1]]).shape[0 if node.op_type == "Conv" else -1]
        if numpy_helper.to_array(float_inits[bias]).size != columns:
            continue  # a bias that is not one value per output channel (a broadcast scalar, a full tensor)
        found.append((node, original.input[1], bias, axis))
    return found


def _measuring_model(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, error: str = "layer") -> tuple[onnx.ModelProto, list[_Layer]]:
    """The QDQ model plus, per layer, conv(x, W) − conv(x̂, Ŵ) (error "layer") or conv(x, W) − conv(x, Ŵ) (error
    "weights": the weights' rounding only) summed over every axis but the output channels."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq_model)
    graph = model.graph
    producers = _producers(graph)
    float_inits = {i.name: i for i in float_model.graph.initializer}
    axes_as_input = default_opset(model) >= 13
    layers = []
    for node, weight, bias, axis in _layers(float_model.graph, graph):
        tag = f"{node.name}{_SUFFIX}"
        float_weight = onnx.TensorProto()
        float_weight.CopyFrom(float_inits[weight])
        float_weight.name = f"{tag}_w"
        graph.initializer.append(float_weight)
        inputs_float = [_before_qdq(node.input[0], producers), float_weight.name]
        inputs_quant = [node.input[0] if error == "layer" else inputs_float[0], node.input[1]]
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        graph.node.append(helper.make_node(node.op_type, inputs_float, [f"{tag}_ref"], name=f"{tag}_ref", **attributes))
        graph.node.append(helper.make_node(node.op_type, inputs_quant, [f"{tag}_q"], name=f"{tag}_q", **attributes))
        graph.node.append(helper.make_node("Sub", [f"{tag}_ref", f"{tag}_q"], [f"{tag}_d"], name=f"{tag}_d"))
        difference = f"{tag}_d"
        if axis == -1:  # MatMul: channels last; every leading axis flattened into one
            graph.node.append(helper.make_node("Flatten", [difference], [f"{tag}_flat"], name=f"{tag}_flat", axis=-1))
            difference, reduce_axes = f"{tag}_flat", [0]
        else:  # Conv: N, C, spatial... (the output's rank is the weight's)
            reduce_axes = [0, *range(2, len(float_weight.dims))]
        if axes_as_input:
            graph.initializer.append(numpy_helper.from_array(np.array(reduce_axes, np.int64), f"{tag}_axes"))
            graph.node.append(helper.make_node("ReduceSum", [difference, f"{tag}_axes"], [f"{tag}_sum"], name=f"{tag}_sum", keepdims=0))
        else:
            graph.node.append(helper.make_node("ReduceSum", [difference], [f"{tag}_sum"], name=f"{tag}_sum", axes=reduce_axes, keepdims=0))
        graph.node.append(helper.make_node("Shape", [difference], [f"{tag}_shape"], name=f"{tag}_shape"))
        graph.output.append(helper.make_tensor_value_info(f"{tag}_sum", onnx.TensorProto.FLOAT, None))
        graph.output.append(helper.make_tensor_value_info(f"{tag}_shape", onnx.TensorProto.INT64, None))
        layers.append(_Layer(bias, f"{tag}_sum", f"{tag}_shape"))
    return model, layers


def measure_bias_shifts(
    float_model_path: Path, qdq_model_path: Path, feeds: Iterable[Feeds], threads: int | None = None, error: str = "layer"
) -> BiasShifts:
    """Mean error per output channel of every correctable layer over `feeds`, in bounded memory (running sums)."""
    float_model = load_proto(float_model_path)
    qdq_model = load_proto(qdq_model_path)
    model, layers = _measuring_model(float_model, qdq_model, error)
    if not layers:
        return BiasShifts({}, 0)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="quant-bias-") as scratch:
        path = Path(scratch) / "measure.onnx"
        save_model(model, path)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [name for layer in layers for name in (layer.sum_output, layer.shape_output)]
        sums = {layer.bias: np.zeros(0) for layer in layers}
        counts = dict.fromkeys(sums, 0)
        samples = 0
        for feed in feeds:
            values = dict(zip(names, session.run(names, feed)))
            for layer in layers:
                total, shape = values[layer.sum_output].astype(np.float64), values[layer.shape_output]
                sums[layer.bias] = total if sums[layer.bias].size == 0 else sums[layer.bias] + total
                counts[layer.bias] += int(np.prod(shape)) // max(total.size, 1)
            samples += 1
    shifts = {bias: (total / counts[bias]).astype(np.float32) for bias, total in sums.items() if counts[bias]}
    return BiasShifts(shifts, samples)


def corrected_model(float_model_path: Path, shifts: BiasShifts, out_path: Path) -> Path:
    """The float model with each measured shift added to its bias initializer (shape kept)."""
    model = load_proto(float_model_path)
    for initializer in model.graph.initializer:
        shift = shifts.shifts.get(initializer.name)
        if shift is None:
            continue
        bias = numpy_helper.to_array(initializer)
        initializer.CopyFrom(numpy_helper.from_array((bias + shift.reshape(bias.shape)).astype(bias.dtype), initializer.name))
    save_model(model, out_path)
    return out_path
