"""Static INT8 with onnxruntime.quantization.quantize_static, on ranges calibrated once and cached."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import QuantFormat, quantize_static
from onnxruntime.quantization.calibrate import load_tensors_data

from quant.calibration.ranges import CalibrationRanges, calibration_ranges
from quant.calibration.streaming import CALIBRATION_METHODS
from quant.data.feeds import checked_feeds
from quant.data.sources import SampleSource
from quant.errors import BuildError
from quant.methods.base import QUANT_TYPES, BuildContext, BuildResult, register
from quant.methods.bias_correction import corrected_model, measure_bias_shifts
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
    source_sha256 = file_sha256(source)

    def ranges_by(method: str, percentile: float) -> CalibrationRanges:
        return calibration_ranges(
            source,
            source_sha256,
            calibration,
            context.model_inputs,
            method=method,
            percentile=percentile,
            op_types=options.op_types,
            cache_dir=context.cache_dir,
            log=context.log,
            threads=context.threads,
        )

    started = time.perf_counter()
    ranges = ranges_by(options.calibrate, options.percentile)
    overrides = tensor_quant_overrides(options, source, ranges_by)
    calibration_seconds = time.perf_counter() - started
    out_path.parent.mkdir(parents=True, exist_ok=True)
    excluded = list(dict.fromkeys(options.exclude_nodes))

    def quantize(model: Path, into: Path, quant_format: str = options.format) -> None:
        quantize_static(
            model,
            into,
            calibration_data_reader=None,
            calibration_cache_path=ranges.cache_file,
            quant_format=FORMATS[quant_format],
            op_types_to_quantize=options.op_types,
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            activation_type=QUANT_TYPES[options.activation_type],
            weight_type=QUANT_TYPES[options.weight_type],
            nodes_to_exclude=excluded,
            calibrate_method=CALIBRATION_METHODS[options.calibrate],
            use_external_data_format=model_size(source) >= PROTOBUF_LIMIT,
            extra_options={"TensorQuantOverrides": overrides} if overrides else None,
        )

    corrected: dict[str, object] | None = None
    if options.bias_correction:
        corrected = _bias_corrected(options, context, calibration, source, out_path, quantize)
    else:
        quantize(source, out_path)
    details = {
        "prepared_model": str(source),
        "calibration": ranges.describe(),
        "calibration_seconds": round(calibration_seconds, 3),
        "excluded_nodes": excluded,
        "tensor_overrides": {
            name: [{k: v.item() if isinstance(v, np.ndarray) else v for k, v in e.items()} for e in es] for name, es in overrides.items()
        },
        "quantized_ops": quantized_op_counts(out_path),
    }
    if corrected is not None:
        details["bias_correction"] = corrected
    return BuildResult(out_path, details)


def _bias_corrected(
    options: StaticInt8Options,
    context: BuildContext,
    calibration: SampleSource,
    source: Path,
    out_path: Path,
    quantize: Callable[..., None],
) -> dict[str, object]:
    """Quantize once (QDQ, whose Q/DQ pairs show each layer's quantized input and weight), measure each layer's mean
    output error on calibration samples, shift the float biases by it, and quantize the corrected model into
    `out_path` (quant.methods.bias_correction). Returns what it did."""
    started = time.perf_counter()
    samples = calibration.subset(options.bias_correction_samples)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.stem}-bias-") as scratch_dir:
        scratch = Path(scratch_dir)
        quantize(source, scratch / "uncorrected.onnx", "QDQ")
        feeds = (f for _, f in checked_feeds(samples, context.model_inputs))
        shifts = measure_bias_shifts(source, scratch / "uncorrected.onnx", feeds, context.threads, options.bias_correction_error)
        quantize(corrected_model(source, shifts, scratch / "corrected.onnx"), out_path)
    context.log(f"bias correction: {len(shifts.shifts)} bias(es) shifted, measured on {shifts.samples} calibration samples")
    return shifts.describe() | {"seconds": round(time.perf_counter() - started, 3)}


def tensor_quant_overrides(
    options: StaticInt8Options, source: Path, ranges_by: Callable[[str, float], CalibrationRanges]
) -> dict[str, list[dict[str, Any]]]:
    """The recipe's `tensor_overrides` as onnxruntime's TensorQuantOverrides: 7/8-bit weights per initializer, and
    an activation's range (rmin/rmax) from another calibration method's cached ranges."""
    if not options.tensor_overrides:
        return {}
    graph = onnx.load(str(source), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    tensors = initializers | {t for n in graph.node for t in (*n.input, *n.output)}
    overrides: dict[str, list[dict[str, Any]]] = {}
    loaded: dict[tuple[str, float], Any] = {}
    for name, override in options.tensor_overrides.items():
        if name not in tensors:
            raise BuildError(f"tensor_overrides: the prepared model has no tensor '{name}'")
        entry: dict[str, Any] = {}
        if override.reduce_range is not None:
            if name not in initializers:
                raise BuildError(f"tensor_overrides.{name}.reduce_range: only weights (initializers) have 7/8-bit ranges; '{name}' is an activation")
            entry["reduce_range"] = override.reduce_range
        if override.calibrate is not None:
            if name in initializers:
                raise BuildError(f"tensor_overrides.{name}.calibrate: '{name}' is a weight; only activations are calibrated")
            key = (override.calibrate, override.percentile if override.percentile is not None else options.percentile)
            if key not in loaded:
                loaded[key] = load_tensors_data(ranges_by(*key).cache_file)
            data = loaded[key].data.get(name)
            if data is None:
                raise BuildError(f"tensor_overrides.{name}.calibrate: '{name}' was not calibrated (is it an input of a quantized op?)")
            rmin, rmax = (np.array(v, dtype=np.float32) for v in data.range_value)  # onnxruntime reads their dtype
            entry |= {"rmin": rmin, "rmax": rmax}
        overrides[name] = [entry]
    return overrides
