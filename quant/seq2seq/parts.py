"""Building one part of an encoder–decoder family with a named method: the "part -> method" of a variant.

    feeds = part_feeds(fp32_family, "decoder_with_past", calibration_images, config)   # real inputs of that part
    build_part(options, "decoder_with_past", fp32_dir / "decoder_with_past_model.onnx", out_dir / ...,
               work_dir=..., cache_dir=..., feeds=feeds)

- `fp16`, `dynamic_int8`, `weight_only` (per-node overrides: the LM head at 8 bits): the method's own
  builder (quant.methods) on the part file. `fp16` with `repair: scan` or `auto` also runs the FP16
  pre-flight scan (quant.fp16.scan) on the part's real feeds and keeps what it flags in FP32 (the
  runner's gate-validated search is for single models; here the flagged set is kept as it is).
- `static_int8`: activation ranges from the part's real feeds, streamed in bounded memory
  (quant.calibration.streaming), then onnxruntime's quantize_static on those ranges. For a decoder
  part the feeds are the steps of FP32 generation (quant.seq2seq.capture): real past keys/values,
  never zeros (an all-zero state is refused).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from quant.calibration.streaming import collect_ranges, quantize_static_default_op_types, quantize_with_ranges
from quant.errors import BuildError
from quant.fp16.scan import scan
from quant.methods.base import QUANT_TYPES, BuildContext, BuildResult, builder_for
from quant.methods.fp16 import fp16_source
from quant.methods.prepare import prepared_model
from quant.methods.static_int8 import FORMATS
from quant.model import PROTOBUF_LIMIT, file_sha256, model_size, session
from quant.precision import quantized_op_counts
from quant.recipe.schema import DynamicInt8Options, Fp16Options, StaticInt8Options, WeightOnlyOptions
from quant.seq2seq.capture import DECODER_PARTS, CapturedFeeds, check_real_state
from quant.seq2seq.generate import Family, Feeds, GenerationConfig

PARTS = ("encoder", *DECODER_PARTS)
# optimum's file names for each part
PART_FILES = {"encoder": "encoder_model.onnx", "decoder": "decoder_model.onnx", "decoder_with_past": "decoder_with_past_model.onnx"}
PartOptions = Fp16Options | DynamicInt8Options | StaticInt8Options | WeightOnlyOptions
Log = Callable[[str], None]


def open_family(folder: Path, *, threads: int = 1, files: dict[str, str] = PART_FILES) -> Family:
    """The family whose part files (optimum's names by default) are in `folder`, one session per part."""
    return Family(*(session(folder / files[part], threads=threads) for part in PARTS))


class _CheckedFeeds:
    """Feeds passed through the zero-state check on every pass (re-iterable when the source is)."""

    def __init__(self, part: str, feeds: Iterable[Feeds]) -> None:
        self.part, self.feeds = part, feeds

    def __iter__(self):
        for fed in self.feeds:
            yield check_real_state(self.part, fed)


def part_feeds(fp32: Family, part: str, images: Sequence[Feeds], config: GenerationConfig) -> Iterable[Feeds]:
    """The real inputs of `part` on these images, re-iterable: the images for the encoder, the steps of FP32
    greedy generation for a decoder part (generated again on every pass; one image's steps held at a time)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    return list(images) if part == "encoder" else CapturedFeeds(fp32, list(images), config, part)


def _context(source: Path, work_dir: Path, cache_dir: Path, log: Log) -> BuildContext:
    return BuildContext(model_path=source, model_sha256=file_sha256(source), model_inputs={}, work_dir=work_dir, cache_dir=cache_dir, log=log)


def _fp16_guarded(options: Fp16Options, context: BuildContext, feeds: Iterable[Feeds] | None) -> tuple[Fp16Options, dict[str, object]]:
    """The pre-flight scan on the part's real feeds; its flagged nodes join keep_fp32."""
    if options.repair == "off":
        return options, {}
    if feeds is None:
        raise BuildError(f"fp16 with repair: {options.repair} on a family part needs the part's feeds to scan")
    result = scan(fp16_source(options, context), feeds, options.preflight.headroom)
    kept = list(dict.fromkeys([*options.keep_fp32, *result.flagged_nodes]))
    return options.model_copy(update={"keep_fp32": kept}), {"preflight": result.to_dict(limit=10)}


def _build_static(options: StaticInt8Options, context: BuildContext, out_path: Path, feeds: Iterable[Feeds]) -> BuildResult:
    source = prepared_model(context.model_path, context.model_sha256, options.prepare, context.cache_dir)
    op_types = options.op_types or quantize_static_default_op_types()
    ranges = collect_ranges(
        source, feeds, options.calibrate, percentile=options.percentile, op_types_to_calibrate=op_types, work_dir=context.work_dir / "ranges"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    quantize_with_ranges(
        source,
        out_path,
        ranges,
        quant_format=FORMATS[options.format],
        activation_type=QUANT_TYPES[options.activation_type],
        weight_type=QUANT_TYPES[options.weight_type],
        per_channel=options.per_channel,
        reduce_range=options.reduce_range,
        op_types_to_quantize=options.op_types,
        nodes_to_exclude=list(dict.fromkeys(options.exclude_nodes)),
        use_external_data_format=model_size(source) >= PROTOBUF_LIMIT,
    )
    details = {"prepared_model": str(source), "calibrated_tensors": len(ranges.data), "quantized_ops": quantized_op_counts(out_path)}
    return BuildResult(out_path, details)


def build_part(
    options: PartOptions,
    part: str,
    source: Path,
    out_path: Path,
    *,
    work_dir: Path,
    cache_dir: Path,
    feeds: Iterable[Feeds] | None = None,
    log: Log = lambda message: None,
) -> BuildResult:
    """Build `part` (its FP32 file `source`) with `options` into `out_path`.

    `feeds`: the part's real inputs (`part_feeds`), re-iterable; needed by static_int8 and by fp16 with repair."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    context = _context(source, work_dir, cache_dir, log)
    checked = None if feeds is None else _CheckedFeeds(part, feeds)
    if isinstance(options, StaticInt8Options):
        if checked is None:
            raise BuildError(f"static_int8 of the {part} part needs calibration feeds (captured from FP32 generation for a decoder)")
        result = _build_static(options, context, out_path, checked)
    else:
        extra: dict[str, object] = {}
        if isinstance(options, Fp16Options):
            options, extra = _fp16_guarded(options, context, checked)
        result = builder_for(options)(options, context, out_path)
        result.details.update(extra)
    result.details = {"part": part, "method": options.method, **result.details}
    return result
