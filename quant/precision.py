"""What a built variant really changed: its quantized ops, its float16 tensors, and the verdict for a
variant that changed nothing (an FP32 copy must never be judged, or promoted, as an INT8 variant)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import onnx

# Ops that onnxruntime's quantizers (and Neural Compressor) emit; anything QLinear*/DynamicQuantize* too,
# and the com.microsoft Q-ops (QGemm, QAttention, QEmbedLayerNormalization, QOrdered*).
# MatMulNBits/GatherBlockQuantized: the com.microsoft block-quantized weights of weight_only.
QUANTIZED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat"}
    | {"MatMulNBits", "GatherBlockQuantized"}
)
QUANTIZED_PREFIXES = ("QLinear", "DynamicQuantize")
SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})
QUANTIZING_METHODS = frozenset({"dynamic_int8", "static_int8", "inc", "weight_only"})


def _is_quantized(node: onnx.NodeProto) -> bool:
    if node.op_type in QUANTIZED_OPS or node.op_type.startswith(QUANTIZED_PREFIXES):
        return True
    microsoft_q_op = node.domain == "com.microsoft" and len(node.op_type) > 1 and node.op_type[0] == "Q" and node.op_type[1].isupper()
    return microsoft_q_op  # QGemm, QAttention, ... but not QuickGelu


# Ops that carry a model's weights and compute: what INT8 methods are for.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN", "Attention", "EmbedLayerNormalization"})


def _load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def nested_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The nodes inside the subgraphs (If branches, Loop/Scan bodies) of `graph`'s nodes, at any depth."""
    for node in graph.node:
        for subgraph in _subgraphs(node):
            yield from subgraph.node
            yield from nested_nodes(subgraph)


def quantized_op_counts(path: Path) -> dict[str, int]:
    """How many quantization ops of each type a built model has, subgraphs included: none means nothing was quantized."""
    graph = _load(path).graph
    counts = Counter(n.op_type for n in (*graph.node, *nested_nodes(graph)) if _is_quantized(n))
    return dict(sorted(counts.items()))


def has_subgraphs(path: Path) -> bool:
    return any(True for _ in nested_nodes(_load(path).graph))


def weighted_ops_by_level(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The weighted ops (Conv, MatMul, LSTM, ...) of the top-level graph, and those inside subgraphs."""
    graph = _load(path).graph
    top = Counter(n.op_type for n in graph.node if n.op_type in WEIGHTED_OPS)
    nested = Counter(n.op_type for n in nested_nodes(graph) if n.op_type in WEIGHTED_OPS)
    return dict(top), dict(nested)


def float16_tensor_count(path: Path) -> int:
    """Float16 initializers plus Casts to float16: what an FP16 conversion leaves behind."""
    graph = _load(path).graph
    initializers = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    casts = sum(n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute) for n in graph.node)
    return initializers + casts


def op_type_counts(path: Path) -> dict[str, int]:
    """The model's own op types (top-level graph), most frequent first."""
    return dict(Counter(n.op_type for n in _load(path).graph.node).most_common())


def nothing_quantized(method: str, source: Path, built: Path, op_types: list[str] | None = None) -> str | None:
    """Why the built model is an unchanged FP32 copy, or None when the method changed something."""
    if method in QUANTIZING_METHODS:
        if quantized_op_counts(built):
            return None
        asked = f"op_types {op_types}" if op_types else "every op type it supports"
    elif method == "fp16":
        if float16_tensor_count(built):
            return None
        asked = "op_block_list/keep_fp32"
    else:
        return None
    present = op_type_counts(source)
    listed = ", ".join(f"{op} x{count}" for op, count in present.items())
    hint = ""
    nested = sorted(SUBGRAPH_OPS & set(present))
    if nested:
        hint = f"; the graph sits under {'/'.join(nested)} (only dynamic_int8 quantizes inside subgraphs)"
    elif op_types and not set(op_types) & set(present):
        hint = f"; the model has none of {op_types}"
    return f"{method} quantized no node ({asked}); the model's op types: {listed}{hint}"


FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64",
}


def float_weight_types(path: Path) -> dict[str, int]:
    """How many float weights (initializers and Constant values) of each type a model holds."""
    graph = _load(path).graph
    tensors = [*graph.initializer, *(a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.HasField("t"))]
    counts = Counter(FLOAT_TYPES[t.data_type] for t in tensors if t.data_type in FLOAT_TYPES)
    return dict(counts)


def source_precision(path: Path) -> str:
    """What to call a source model in a summary: "FP16" when its float weights are float16, else "FP32"."""
    types = float_weight_types(path)
    return "FP16" if types.get("float16", 0) > types.get("float32", 0) else "FP32"


def one_value_per_sample(dims: list[int | str | None]) -> bool:
    """An output holding one number per sample ([], [1], [N, 1], ...): cosine similarity means nothing there."""
    return all(d == 1 for d in dims[1:]) and (not dims or not isinstance(dims[0], int) or dims[0] == 1)
