"""Cast clean-up after the FP16 conversion: a value kept in FP32 stays FP32 between FP32 nodes.

onnxruntime's float16 helper casts every output of a node kept in FP32 back to FP16 and every input of one
back to FP32, even when both ends are FP32 nodes (or the FP32 graph input). So a kept chain such as the
Pow -> ReduceMean of a decomposed LayerNorm still passes its squares through FP16 and overflows. Here each
`Cast(to FP32)` whose input is a `Cast(to FP16)` of an FP32 tensor is bypassed: its readers get the FP32
tensor itself. The FP16 cast stays only while something still reads the FP16 copy.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def drop_fp16_round_trips(model: onnx.ModelProto) -> int:
    """Bypass FP32 -> FP16 -> FP32 cast pairs (exact: the FP32 value is what the FP32 reader wanted); returns how many."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    typed = onnx.shape_inference.infer_shapes(model).graph
    elem_type = {v.name: v.type.tensor_type.elem_type for v in [*typed.value_info, *typed.input, *typed.output]}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    removed: list[onnx.NodeProto] = []
    identities = 0
    for node in graph.node:
        if _cast_to(node) != TensorProto.FLOAT:
            continue
        upstream = producer.get(node.input[0])
        # Only a true round trip: the FP16 cast's own input must be FP32 (not an integer or an FP16 tensor).
        if upstream is None or _cast_to(upstream) != TensorProto.FLOAT16 or elem_type.get(upstream.input[0]) != TensorProto.FLOAT:
            continue
        if node.output[0] in outputs:  # a graph output keeps its name: an Identity of the FP32 value
            node.op_type, node.input[0] = "Identity", upstream.input[0]
            del node.attribute[:]
            identities += 1
            continue
        rename[node.output[0]] = upstream.input[0]  # upstream's input is FP32: it was cast to FP16 from it
        removed.append(node)
    if not removed:
        return identities
    for node in removed:
        graph.node.remove(node)
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in rename:
                node.input[index] = rename[name]
    read = {name for node in graph.node for name in node.input} | outputs
    orphans = [n for n in graph.node if _cast_to(n) == TensorProto.FLOAT16 and n.output[0] not in read]
    for node in orphans:  # FP16 copies nothing reads any more
        graph.node.remove(node)
    gone = set(rename) | {n.output[0] for n in orphans}
    kept_info = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return len(removed) + identities


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Order nodes so each comes after the producers of its inputs (the helper appends its Casts at the end, which
    onnxruntime accepts but onnx.checker and other tools refuse); otherwise the original order is kept."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:  # a cycle or a tensor from an outer scope: leave the rest as it was
            ordered.extend(pending)
            break
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for node in ready:
            ordered.append(node)
            available.update(node.output)
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
