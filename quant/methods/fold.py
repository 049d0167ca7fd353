"""Exact FP32 graph rewrites before quantization (the `prepare.fuse` option).

onnxruntime 1.32 fuses none of these patterns, which PP-LCNetV3-style networks (PP-OCRv4 rec and det)
repeat in every block; on those models they are a third of the FP32 run time (notes/int8-findings.md):

1. `Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)` becomes `HardSwish(x)` (opset 14).
2. A constant per-channel `Mul`/`Add` right after a Conv (its only consumer) is folded into the Conv's
   weight and bias.
3. A constant `Mul` then `Add` right before a Conv is folded into it; the `Add` only when the Conv has no
   padding (zero padding of `h + d` is not `d`, so that fold would not be exact).

Each is an identity in real arithmetic; the result differs from the original by float rounding only.
Folding also helps INT8: an affine shift in front of a quantization point wastes part of the range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quant.model import default_opset

HARDSWISH_OPSET = 14


@dataclass
class GraphIndex:
    """Lookups over a graph that the rewrites keep up to date."""

    graph: onnx.GraphProto
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.constants = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.outputs = {o.name for o in self.graph.output}

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return next((n for n in self.graph.node if tensor in n.output), None)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if tensor in n.input]

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The single node reading `tensor`, when it is also not a graph output."""
        readers = self.consumers(tensor)
        return readers[0] if len(readers) == 1 and tensor not in self.outputs else None

    def scalar(self, tensor: str) -> float | None:
        value = self.constants.get(tensor)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def set_constant(self, name: str, value: np.ndarray) -> str:
        self.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        self.constants[name] = value.astype(np.float32)
        return name

    def fresh_name(self, base: str) -> str:
        name, index = base, 0
        while name in self.constants:
            index += 1
            name = f"{base}_{index}"
        return name

    def drop_unused_constants(self) -> None:
        used = {i for n in self.graph.node for i in n.input} | self.outputs
        kept = [i for i in self.graph.initializer if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)


def fuse_hardswish(index: GraphIndex) -> int:
    """x * Clip(x + 3, 0, 6) / 6 -> HardSwish(x); returns how many were fused."""
    fused = 0
    for div in [n for n in index.graph.node if n.op_type == "Div"]:
        if index.scalar(div.input[1]) != 6.0:
            continue
        mul = index.producer(div.input[0])
        if mul is None or mul.op_type != "Mul" or index.only_consumer(mul.output[0]) is not div:
            continue
        for x_slot, clip_slot in ((0, 1), (1, 0)):
            clip = index.producer(mul.input[clip_slot])
            if clip is not None and clip.op_type == "Clip":
                break
        else:
            continue
        x = mul.input[x_slot]
        add = index.producer(clip.input[0])
        if len(clip.input) < 3 or index.scalar(clip.input[1]) != 0.0 or index.scalar(clip.input[2]) != 6.0:
            continue
        if add is None or add.op_type != "Add" or add.input[0] != x or index.scalar(add.input[1]) != 3.0:
            continue
        if index.only_consumer(add.output[0]) is not clip or index.only_consumer(clip.output[0]) is not mul:
            continue
        position = list(index.graph.node).index(add)
        for node in (add, clip, mul, div):
            index.graph.node.remove(node)
        index.graph.node.insert(position, helper.make_node("HardSwish", [x], [div.output[0]], name=f"{div.name or x}_hardswish"))
        fused += 1
    return fused


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    flat = value.reshape(-1)
    if flat.size == 1:
        return np.repeat(flat, channels)
    # Broadcast against NCHW only as [C], [C,1,1] or [1,C,1,1]: anything else is not per-channel.
    return flat if flat.size == channels and value.ndim in (1, 3, 4) and (value.ndim < 4 or value.shape[0] == 1) else None


def _conv_parameters(index: GraphIndex, conv: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    weight = index.constants.get(conv.input[1])
    if weight is None:
        return None
    has_bias = len(conv.input) > 2 and conv.input[2]
    bias = index.constants.get(conv.input[2]) if has_bias else np.zeros(weight.shape[0], np.float32)
    return (weight, bias) if bias is not None else None


def _set_conv_parameters(index: GraphIndex, conv: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray) -> None:
    while len(conv.input) < 3:
        conv.input.append("")
    conv.input[1] = index.set_constant(index.fresh_name(f"{conv.name or conv.output[0]}_folded_W"), weight)
    conv.input[2] = index.set_constant(index.fresh_name(f"{conv.name or conv.output[0]}_folded_B"), bias)


def fold_affine_after_conv(index: GraphIndex) -> int:
    """Conv -> Mul(const)/Add(const) folded into the Conv (W*a, B*a + b); returns how many ops went."""
    folded = 0
    changed = True
    while changed:
        changed = False
        for conv in [n for n in index.graph.node if n.op_type == "Conv"]:
            follower = index.only_consumer(conv.output[0])
            parameters = _conv_parameters(index, conv)
            if follower is None or follower.op_type not in ("Mul", "Add") or parameters is None:
                continue
            others = [i for i in follower.input if i != conv.output[0]]
            value = index.constants.get(others[0]) if len(others) == 1 else None
            weight, bias = parameters
            vector = _per_channel(value, weight.shape[0]) if value is not None else None
            if vector is None:
                continue
            if follower.op_type == "Mul":
                weight, bias = weight * vector.reshape(-1, *([1] * (weight.ndim - 1))), bias * vector
            else:
                bias = bias + vector
            _set_conv_parameters(index, conv, weight, bias)
            conv.output[0] = follower.output[0]
            index.graph.node.remove(follower)
            folded += 1
            changed = True
            break
    return folded


def _unpadded(conv: onnx.NodeProto) -> bool:
    attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    return all(p == 0 for p in attributes.get("pads", [])) and auto_pad in (b"NOTSET", b"VALID")


def fold_affine_before_conv(index: GraphIndex) -> int:
    """y = c*h + d feeding a Conv: W*c into the weight, the Add into the bias (unpadded Convs only)."""
    folded = 0
    for conv in [n for n in index.graph.node if n.op_type == "Conv"]:
        parameters = _conv_parameters(index, conv)
        if parameters is None:
            continue
        weight, bias = parameters
        groups = next((a.i for a in conv.attribute if a.name == "group"), 1)
        per_group = weight.shape[1]
        in_channels = per_group * groups
        chain: list[tuple[onnx.NodeProto, np.ndarray, str]] = []  # nearest the Conv first
        tensor = conv.input[0]
        while True:
            node = index.producer(tensor)
            expected_reader = chain[-1][0] if chain else conv
            if node is None or node.op_type not in ("Add", "Mul") or index.only_consumer(tensor) is not expected_reader:
                break
            variable = [i for i in node.input if i not in index.constants]
            constant = [i for i in node.input if i in index.constants]
            if len(variable) != 1 or len(constant) != 1:
                break
            vector = _per_channel(index.constants[constant[0]], in_channels)
            if vector is None or (node.op_type == "Add" and not _unpadded(conv)):
                break
            chain.append((node, vector, variable[0]))
            tensor = variable[0]
            if node.op_type == "Mul":
                break
        if not chain:
            continue
        for node, vector, _ in chain:
            grouped = weight.reshape(groups, weight.shape[0] // groups, per_group, *weight.shape[2:])
            by_channel = vector.reshape(groups, 1, per_group, *([1] * (weight.ndim - 2)))
            if node.op_type == "Add":  # conv(h + d) = conv(h) + sum over inputs and kernel of W*d
                bias = bias + (grouped * by_channel).reshape(weight.shape[0], -1).sum(axis=1)
            else:
                weight = (grouped * by_channel).reshape(weight.shape)
            index.graph.node.remove(node)
            folded += 1
        _set_conv_parameters(index, conv, weight, bias)
        conv.input[0] = chain[-1][2]
    return folded


def fuse_exact(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """All three rewrites; the model must already be at opset 14 or later when HardSwish is wanted."""
    index = GraphIndex(model.graph)
    opset = default_opset(model)
    counts = {
        "hardswish": fuse_hardswish(index) if opset >= HARDSWISH_OPSET else 0,
        "affine_after_conv": fold_affine_after_conv(index),
        "affine_before_conv": fold_affine_before_conv(index),
    }
    index.drop_unused_constants()
    return model, counts
