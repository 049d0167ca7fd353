"""FP16 variant with onnxconverter-common."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import load_external_data_for_tensor
from onnxconverter_common import float16

from quant.errors import BuildError
from quant.methods.base import BuildContext, BuildResult, register
from quant.model import load_proto, save_model
from quant.recipe.schema import Fp16Options

MIN_POSITIVE, MAX_FINITE = 1e-7, 1e4  # the converter's defaults, also used for the weights converted in slices
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


@register("fp16")
def build_fp16(options: Fp16Options, context: BuildContext, out_path: Path) -> BuildResult:
    # Weights in external data files are never loaded whole (a >2 GB model cannot even be held in one
    # protobuf): the converter sees them with their data on disk and only changes their type.
    model = load_proto(context.model_path, load_external=False)
    streamed = _take_external(model, context.model_path.parent)
    kwargs = {
        "keep_io_types": options.keep_io_types,
        "node_block_list": options.node_block_list or None,
        "min_positive_val": MIN_POSITIVE,
        "max_finite_val": MAX_FINITE,
    }
    if options.op_block_list is not None:
        kwargs["op_block_list"] = options.op_block_list
    with warnings.catch_warnings(record=True) as caught:
        # The converter warns once per weight it clips to the FP16 range: count them instead.
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(model, **kwargs)
        if streamed:
            _write_external(converted, streamed, out_path)
    clipped = sum("truncated" in str(w.message) for w in caught)
    save_model(converted, out_path)
    blocked = options.op_block_list if options.op_block_list is not None else sorted(float16.DEFAULT_OP_BLOCK_LIST)
    return BuildResult(out_path, {"op_block_list": blocked, "node_block_list": options.node_block_list, "values_clipped_to_fp16_range": clipped})
