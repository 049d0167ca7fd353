"""Dynamic INT8 with onnxruntime.quantization.quantize_dynamic."""

from __future__ import annotations

from pathlib import Path

from onnxruntime.quantization import quantize_dynamic

from quant.methods.base import QUANT_TYPES, BuildContext, BuildResult, register
from quant.methods.prepare import prepared_model
from quant.model import PROTOBUF_LIMIT, model_size
from quant.precision import has_subgraphs, quantized_op_counts
from quant.recipe.schema import DynamicInt8Options


@register("dynamic_int8")
def build_dynamic_int8(options: DynamicInt8Options, context: BuildContext, out_path: Path) -> BuildResult:
    source = prepared_model(context.model_path, context.model_sha256, options.prepare, context.cache_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    subgraphs = has_subgraphs(source)
    quantize_dynamic(
        source,
        out_path,
        op_types_to_quantize=options.op_types,
        per_channel=options.per_channel,
        reduce_range=options.reduce_range,
        weight_type=QUANT_TYPES[options.weight_type],
        nodes_to_exclude=options.exclude_nodes,
        # Past the protobuf limit the weights must go to an external data file.
        use_external_data_format=model_size(source) >= PROTOBUF_LIMIT,
        # Exports that wrap the network in If/Loop (Silero VAD, merged decoders) keep their weights in subgraphs.
        extra_options={"EnableSubgraph": subgraphs},
    )
    details = {"prepared_model": str(source), "quantized_ops": quantized_op_counts(out_path), "subgraphs_quantized": subgraphs}
    return BuildResult(out_path, details)
