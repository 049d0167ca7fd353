"""FP16 variant with onnxconverter-common."""

from __future__ import annotations

import warnings
from pathlib import Path

from onnxconverter_common import float16

from quant.methods.base import BuildContext, BuildResult, register
from quant.model import PROTOBUF_LIMIT, load_proto, save_model
from quant.recipe.schema import Fp16Options


@register("fp16")
def build_fp16(options: Fp16Options, context: BuildContext, out_path: Path) -> BuildResult:
    model = load_proto(context.model_path)
    kwargs = {"keep_io_types": options.keep_io_types, "node_block_list": options.node_block_list or None}
    if options.op_block_list is not None:
        kwargs["op_block_list"] = options.op_block_list
    # Shape inference inside the converter cannot serialise a >2 GB model; the converter's own
    # shape inference is skipped then (float16 casts do not need it).
    if model.ByteSize() >= PROTOBUF_LIMIT:
        kwargs["disable_shape_infer"] = True
    with warnings.catch_warnings(record=True) as caught:
        # The converter warns once per weight it clips to the FP16 range: count them instead.
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(model, **kwargs)
    clipped = sum("truncated" in str(w.message) for w in caught)
    save_model(converted, out_path)
    blocked = options.op_block_list if options.op_block_list is not None else sorted(float16.DEFAULT_OP_BLOCK_LIST)
    return BuildResult(out_path, {"op_block_list": blocked, "node_block_list": options.node_block_list, "values_clipped_to_fp16_range": clipped})
