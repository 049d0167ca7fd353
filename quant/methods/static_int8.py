"""Static INT8 with onnxruntime.quantization.quantize_static, on ranges calibrated once and cached."""

from __future__ import annotations

import time
from pathlib import Path

from onnxruntime.quantization import QuantFormat, quantize_static

from quant.calibration.ranges import calibration_ranges
from quant.calibration.streaming import CALIBRATION_METHODS
from quant.errors import BuildError
from quant.methods.base import QUANT_TYPES, BuildContext, BuildResult, register
from quant.methods.prepare import prepared_model
from quant.model import PROTOBUF_LIMIT, file_sha256, model_size
from quant.precision import quantized_op_counts
from quant.recipe.schema import StaticInt8Options

FORMATS = {"QDQ": QuantFormat.QDQ, "QOperator": QuantFormat.QOperator}


@register("static_int8")
def build_static_int8(options: StaticInt8Options, context: BuildContext, out_path: Path) -> BuildResult:
    """Build the static INT8 model, leaving `options.exclude_nodes` in float (the fallback search adds to them)."""
    if context.calibration is None:
        raise BuildError("static_int8 needs a calibration data set")
    source = prepared_model(context.model_path, context.model_sha256, options.prepare, context.cache_dir)
    calibration = context.calibration.subset(options.calibration_samples)
    started = time.perf_counter()
    ranges = calibration_ranges(
        source,
        file_sha256(source),
        calibration,
        context.model_inputs,
        method=options.calibrate,
        percentile=options.percentile,
        op_types=options.op_types,
        cache_dir=context.cache_dir,
        log=context.log,
    )
    calibration_seconds = time.perf_counter() - started
    out_path.parent.mkdir(parents=True, exist_ok=True)
    excluded = list(dict.fromkeys(options.exclude_nodes))
    quantize_static(
        source,
        out_path,
        calibration_data_reader=None,
        calibration_cache_path=ranges.cache_file,
        quant_format=FORMATS[options.format],
        op_types_to_quantize=options.op_types,
        per_channel=options.per_channel,
        reduce_range=options.reduce_range,
        activation_type=QUANT_TYPES[options.activation_type],
        weight_type=QUANT_TYPES[options.weight_type],
        nodes_to_exclude=excluded,
        calibrate_method=CALIBRATION_METHODS[options.calibrate],
        use_external_data_format=model_size(source) >= PROTOBUF_LIMIT,
    )
    details = {
        "prepared_model": str(source),
        "calibration": ranges.describe(),
        "calibration_seconds": round(calibration_seconds, 3),
        "excluded_nodes": excluded,
        "quantized_ops": quantized_op_counts(out_path),
    }
    return BuildResult(out_path, details)

