"""FP16 variant with onnxruntime's float16 helper.

Why that converter: it clamps weights at FP16's own limit (65504), so a clamp only ever touches values FP16
cannot hold, and the pre-flight (quant/fp16/) names those. onnxconverter-common clamps at 1e4 by default,
which silently changes representable weights (PP-OCRv5 det: a BN variance of 34,865; map IoU 0.81), and
its cast clean-up raises on models whose last nodes are kept in FP32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper
from onnx.external_data_helper import load_external_data_for_tensor
from onnxruntime.transformers import float16

from quant.errors import BuildError
from quant.fp16.casts import drop_fp16_round_trips, sort_topologically
from quant.fp16.normalise import normalised_model
from quant.methods.base import BuildContext, BuildResult, register
from quant.model import load_proto, save_model
from quant.recipe.schema import Fp16Options

# FP16's own limits (smallest subnormal, largest finite): also used for the weights converted in slices.
MIN_POSITIVE, MAX_FINITE = 5.96e-08, 65504.0
SLICE_BYTES = 64 << 20


@dataclass(frozen=True)
class _External:
    file: Path
    offset: int
    length: int
    data_type: int


def _nested_tensors(graph: onnx.GraphProto):
    """Tensors below the top-level initializers: node attributes and subgraphs, recursively."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from sub.initializer
                yield from _nested_tensors(sub)


def _take_external(model: onnx.ModelProto, folder: Path) -> dict[str, _External]:
    """Top-level initializers whose data stays on disk (converted in slices later); any other
    external tensor (in a subgraph or an attribute, rare and small) is loaded into the model."""
    streamed: dict[str, _External] = {}
    for tensor in model.graph.initializer:  # names are unique here (onnx.checker)
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            file = folder / entries["location"]
            offset = int(entries.get("offset", 0))
            length = int(entries["length"]) if "length" in entries else file.stat().st_size - offset
            streamed[tensor.name] = _External(file, offset, length, tensor.data_type)
    for tensor in _nested_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            load_external_data_for_tensor(tensor, str(folder))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    return streamed


def _write_external(converted: onnx.ModelProto, streamed: dict[str, _External], out_path: Path) -> None:
    """Each streamed weight, converted to float16 where the converter changed its type (else copied),
    slice by slice into one data file beside the variant; memory stays at one slice."""
    data_name = out_path.name + ".data"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with (out_path.parent / data_name).open("wb") as sink:
        for tensor in converted.graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            source = streamed[tensor.name]
            to_fp16 = source.data_type == onnx.TensorProto.FLOAT and tensor.data_type == onnx.TensorProto.FLOAT16
            offset = sink.tell()
            with source.file.open("rb") as handle:
                handle.seek(source.offset)
                remaining = source.length
                while remaining:
                    block = handle.read(min(remaining, SLICE_BYTES))
                    if not block:
                        raise BuildError(f"external data of '{tensor.name}' ends early in {source.file.name}")
                    remaining -= len(block)
                    if to_fp16:
                        block = float16.convert_np_to_float16(np.frombuffer(block, dtype="<f4"), MIN_POSITIVE, MAX_FINITE).astype("<f2").tobytes()
                    sink.write(block)
            del tensor.external_data[:]
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(sink.tell() - offset))):
                tensor.external_data.add(key=key, value=value)


def _overflowing(model: onnx.ModelProto) -> dict[tuple[str, str], int]:
    """Per in-memory float tensor (initializer, or a Constant-like node's attribute): how many of its values lie
    beyond FP16's range, i.e. would be clamped if it is converted. Keyed by (initializer name, "") or
    (node's first output, attribute name)."""

    def over(tensor: onnx.TensorProto) -> int:
        if tensor.data_type != onnx.TensorProto.FLOAT or tensor.data_location == onnx.TensorProto.EXTERNAL:
            return 0
        return int(np.count_nonzero(np.abs(onnx.numpy_helper.to_array(tensor)) > MAX_FINITE))

    counts = {(t.name, ""): over(t) for t in model.graph.initializer}
    counts |= {(n.output[0], a.name): over(a.t) for n in model.graph.node if n.output for a in n.attribute if a.HasField("t")}
    return {key: count for key, count in counts.items() if count}


def _clipped(converted: onnx.ModelProto, overflowing: dict[tuple[str, str], int]) -> int:
    """How many of those values the conversion clamped (their tensor became FLOAT16)."""
    tensors = {(t.name, ""): t for t in converted.graph.initializer}
    tensors |= {(n.output[0], a.name): a.t for n in converted.graph.node if n.output for a in n.attribute if a.HasField("t")}
    return sum(count for key, count in overflowing.items() if key in tensors and tensors[key].data_type == onnx.TensorProto.FLOAT16)


@contextlib.contextmanager
def _shapes_from_dims() -> Iterator[None]:
    """onnxruntime's helper learns each converted weight's shape by reading its data (numpy_helper.to_array), which
    fails for weights left on disk; the shape is in the tensor's dims, so it is taken from there (same value info)."""
    original = float16.make_value_info_from_tensor
    float16.make_value_info_from_tensor = lambda tensor: helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
    try:
        yield
    finally:
        float16.make_value_info_from_tensor = original


def fp16_source(options: Fp16Options, context: BuildContext) -> Path:
    """The FP32 model the conversion starts from: normalised (cached) unless the recipe says not to."""
    if not options.normalize:
        return context.model_path
    return normalised_model(context.model_path, context.model_sha256, options.fold_batchnorm, context.cache_dir)


@register("fp16")
def build_fp16(options: Fp16Options, context: BuildContext, out_path: Path) -> BuildResult:
    source = fp16_source(options, context)
    # Weights in external data files are never loaded whole (a >2 GB model cannot even be held in one
    # protobuf): the converter sees them with their data on disk and only changes their type.
    model = load_proto(source, load_external=False)
    streamed = _take_external(model, source.parent)
    keep = list(dict.fromkeys(options.keep_fp32))
    unknown = sorted(set(keep) - {n.name for n in model.graph.node})
    if unknown:
        raise BuildError(f"keep_fp32 names node(s) the {'normalised ' if source != context.model_path else ''}model does not have: {unknown[:5]}")
    overflowing = _overflowing(model)
    kwargs = {
        "keep_io_types": options.keep_io_types,
        "node_block_list": keep or None,
        "min_positive_val": MIN_POSITIVE,
        "max_finite_val": MAX_FINITE,
    }
    if options.op_block_list is not None:
        kwargs["op_block_list"] = options.op_block_list
    with _shapes_from_dims():
        converted = float16.convert_float_to_float16(model, **kwargs)
    round_trips = drop_fp16_round_trips(converted)
    sort_topologically(converted.graph)
    if streamed:
        _write_external(converted, streamed, out_path)
    clipped = _clipped(converted, overflowing)
    save_model(converted, out_path)
    blocked = options.op_block_list if options.op_block_list is not None else sorted(float16.DEFAULT_OP_BLOCK_LIST)
    details = {
        "converter": "onnxruntime.transformers.float16",
        "normalized": source != context.model_path,
        "op_block_list": blocked,
        "keep_fp32": keep,
        "fp16_round_trips_removed": round_trips,
        "values_clipped_to_fp16_range": clipped,
    }
    return BuildResult(out_path, details)
