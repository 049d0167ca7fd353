"""Streaming, memory-bounded activation calibration for onnxruntime's static quantizer.

Why this exists: ``onnxruntime.quantization.quantize_static`` (1.32) calibrates by

* MinMax: adding ReduceMin/ReduceMax leaves for every observed tensor and running the
  model with ORT's DEFAULT execution order. That order is a reverse DFS from the graph
  leaves, so the whole original network runs first and the ~2x(#tensors) Reduce nodes
  run at the very end: *every observed activation stays alive until the end of each
  run*. Peak memory is the sum of all activations of the largest input (GBs for wide
  text lines / big pages), plus arena and per-shape memory-pattern growth.
* Entropy/Percentile/Distribution: adding every observed tensor as a graph output and
  keeping all outputs of all batches in a Python list, then ``np.asarray(list)``, which
  needs N x (all activations) and crashes when the batches differ in shape.

Here the same tensors are observed (ORT's own ``select_tensors_to_calibrate``) with the
same per-tensor ReduceMin/ReduceMax(keepdims=1) probes as ORT's MinMax ``augment_graph``
(built in O(n) and placed right after each producer; ORT's insertion is O(n^2)), but:

* the range pass runs with ``ExecutionOrder.PRIORITY_BASED`` (Kahn's order by node
  index) so each probe runs right after its producer and activations are freed as in
  plain inference; memory patterns are off (they are planned and cached per input
  shape); running min/max are merged batch by batch (exactly ORT's nanmin/nanmax);
* histogram methods use a second, fixed-range pass: the global range from the first
  pass gives ORT's one-shot histogram range, so per-batch histograms can be summed
  and equal ORT's histograms bit for bit on fixed shapes. Tensors are observed in
  chunks whose largest per-batch size fits ``max_pass_bytes``, so one run never
  returns more than that. The thresholds are computed by ORT's ``HistogramCollector``.

The quantized graph is always produced by ``quantize_static`` itself: the ranges are
handed to it through its official ``calibration_cache_path`` hook.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime
from onnx import ModelProto, TensorProto, helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import (
    CalibraterBase,
    CalibrationCacheEncoder,
    CalibrationMethod,
    HistogramCollector,
    TensorsData,
    save_tensors_data,
)
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from quant.calibration.fixed_histogram import FixedRangeHistogram
from quant.cores import no_spinning_if_shared

Method = Literal["minmax", "entropy", "percentile", "distribution"]
Batch = dict[str, np.ndarray]

__all__ = [
    "Method",
    "collect_ranges",
    "quantize_static_default_op_types",
    "quantize_with_ranges",
    "ranges_from_json",
    "ranges_to_json",
]

CALIBRATION_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
    "distribution": CalibrationMethod.Distribution,
}
# Defaults of onnxruntime.quantization.calibrate.create_calibrator, i.e. what
# quantize_static uses (it cannot pass num_bins, so these are what it always gets).
_DEFAULT_NUM_BINS = {"entropy": 128, "percentile": 2048, "distribution": 2048}
_DEFAULT_SYMMETRIC = {"minmax": False, "entropy": False, "percentile": True, "distribution": False}
_DEFAULT_MAX_PASS_BYTES = 256 * 2**20
_MIN_SUFFIX = "_quant_streaming_Min"
_MAX_SUFFIX = "_quant_streaming_Max"
_SIZE_SUFFIX = "_quant_streaming_Size"
_ABS_SUFFIX = "_quant_streaming_Abs"
_ABS_MIN_SUFFIX = "_quant_streaming_AbsMin"


def quantize_static_default_op_types() -> list[str]:
    """Op types ``quantize_static`` calibrates (and quantizes) when given none.

    ``collect_ranges(op_types_to_calibrate=None)`` follows ORT's calibrators instead and
    observes every float tensor, a superset; pass this to observe only what
    ``quantize_static`` would.
    """
    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class _Settings:
    method: Method
    symmetric: bool
    num_bins: int
    num_quantized_bins: int
    percentile: float
    scenario: str
    max_pass_bytes: int

    @property
    def absolute_histogram(self) -> bool:
        # ORT histograms |x| only for symmetric percentile (collect_absolute_value).
        return self.method == "percentile" and self.symmetric


def _resolve_settings(
    method: str,
    symmetric: bool | None,
    num_bins: int | None,
    num_quantized_bins: int,
    percentile: float,
    scenario: str,
    max_pass_bytes: int,
) -> _Settings:
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {sorted(CALIBRATION_METHODS)}, not {method!r}")
    if method == "percentile" and not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], not {percentile}")
    if max_pass_bytes <= 0:
        raise ValueError("max_pass_bytes must be positive")
    bins = _DEFAULT_NUM_BINS.get(method, 0) if num_bins is None else num_bins
    if method == "distribution" and bins < 512:
        raise ValueError("distribution needs num_bins >= 512 (ORT's constraint)")
    sym = _DEFAULT_SYMMETRIC[method] if symmetric is None else symmetric
    return _Settings(method, sym, bins, num_quantized_bins, percentile, scenario, max_pass_bytes)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- model set-up


@dataclass
class _Observed:
    """What to observe: ORT's tensor choice, the plain model and the range-probe model."""

    tensors: list[str]
    value_infos: dict[str, onnx.ValueInfoProto]
    graph_inputs: set[str]
    base_model: ModelProto
    range_model_path: Path


def _infer_shapes_into(model_path: Path, work_dir: Path) -> Path:
    # Same as ORT's load_model_with_shape_infer, but the "-inferred" file is written
    # to work_dir instead of next to the (possibly shared / read-only) model.
    inferred = work_dir / "model-inferred.onnx"
    onnx.shape_inference.infer_shapes_path(str(model_path), str(inferred))
    return inferred


def _prepare_models(model_path: Path, op_types: Sequence[str] | None, settings: _Settings, work_dir: Path) -> _Observed:
    inferred = _infer_shapes_into(model_path, work_dir)
    base_model = onnx.load(str(inferred))
    inferred.unlink(missing_ok=True)
    tensors, value_infos = _select_tensors(base_model, op_types)
    range_path = work_dir / "ranges_augmented.onnx"
    range_model = _range_model(base_model, sorted(tensors), value_infos, settings)
    _save_model(range_model, range_path)
    return _Observed(
        tensors=sorted(tensors),
        value_infos=value_infos,
        graph_inputs={i.name for i in base_model.graph.input},
        base_model=base_model,
        range_model_path=range_path,
    )


def _select_tensors(model: ModelProto, op_types: Sequence[str] | None) -> tuple[set[str], dict]:
    # ORT's own choice (CalibraterBase.select_tensors_to_calibrate), without running its
    # constructor, which would shape-infer again and write next to the model file.
    selector = CalibraterBase.__new__(CalibraterBase)
    selector.op_types_to_calibrate = list(op_types) if op_types else None
    return selector.select_tensors_to_calibrate(model)


def _range_model(base: ModelProto, tensors: list[str], value_infos: dict[str, onnx.ValueInfoProto], settings: _Settings) -> ModelProto:
    """Base model + per-tensor ReduceMin/ReduceMax (as ORT's MinMax augment_graph) outputs.

    Histogram methods also get Size (to split the histogram passes by bytes) and, for
    |x| histograms, min|x|: the lower end of ORT's |x| histogram range, which cannot be
    derived from min/max when 0 lies inside.
    """
    model = copy.deepcopy(base)
    producer = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    probes_after: dict[int, list[onnx.NodeProto]] = {}
    for name in tensors:
        elem_type = value_infos[name].type.tensor_type.elem_type
        probes = [("ReduceMin", name, _MIN_SUFFIX, elem_type), ("ReduceMax", name, _MAX_SUFFIX, elem_type)]
        nodes = []
        if settings.method != "minmax":
            probes.append(("Size", name, _SIZE_SUFFIX, TensorProto.INT64))
        if settings.absolute_histogram:
            nodes.append(helper.make_node("Abs", [name], [name + _ABS_SUFFIX], name=name + _ABS_SUFFIX))
            probes.append(("ReduceMin", name + _ABS_SUFFIX, _ABS_MIN_SUFFIX, elem_type))
        for op_type, source, suffix, out_type in probes:
            node = helper.make_node(op_type, [source], [name + suffix], name=name + suffix)
            if op_type != "Size":  # keepdims=1 as ORT: reducing a 0-sized dim without it fails
                node.attribute.append(helper.make_attribute("keepdims", 1))
            nodes.append(node)
            model.graph.output.append(helper.make_tensor_value_info(name + suffix, out_type, None))
        probes_after.setdefault(producer.get(name, -1), []).extend(nodes)
    _insert_after_producers(model, probes_after)
    return model


def _insert_after_producers(model: ModelProto, probes_after: dict[int, list[onnx.NodeProto]]) -> None:
    # Node index order is what PRIORITY_BASED execution follows, so probes placed right
    # after the producer run before the next layer and do not extend tensor lifetimes.
    nodes = list(model.graph.node)
    reordered = list(probes_after.get(-1, []))  # graph inputs: probe first
    for i, node in enumerate(nodes):
        reordered.append(node)
        reordered.extend(probes_after.get(i, []))
    del model.graph.node[:]
    model.graph.node.extend(reordered)


def _save_model(model: ModelProto, path: Path) -> None:
    # Protobuf cannot serialise >2 GB in one message; large models go to external data.
    large = sum(len(t.raw_data) for t in model.graph.initializer) > 1_500_000_000
    onnx.save_model(model, str(path), save_as_external_data=large, location=path.name + ".data" if large else None)


def _session(path: Path, providers: Sequence[str], threads: int | None = None) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    if threads is not None:  # explicit: results may depend on it, and parallel jobs must not oversubscribe the cores
        options.intra_op_num_threads = threads
    no_spinning_if_shared(options)  # beside other units under --jobs: idle threads must not burn their cores
    # As ORT's calibrator: optimisations could fuse observed tensors away or change numerics.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    # DEFAULT order runs all probe/Reduce leaves after the whole network (every
    # activation stays alive); PRIORITY_BASED runs them in node order, right after producers.
    options.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
    # Memory patterns are planned and cached per distinct input shape: with variable
    # widths they cost time and memory and never get re-used.
    options.enable_mem_pattern = False
    return onnxruntime.InferenceSession(str(path), options, providers=list(providers))


# ------------------------------------------------------------------------ batch passes


class _RunCounter:
    def __init__(self, progress: Callable[[int], None] | None) -> None:
        self.runs = 0
        self._progress = progress

    def tick(self) -> None:
        self.runs += 1
        if self._progress is not None:
            self._progress(self.runs)


def _require_reiterable(batches: Iterable[Batch]) -> None:
    # Checked before any work: histogram methods need the same feeds on every pass.
    if iter(batches) is batches:
        raise TypeError(
            "histogram methods read the batches more than once; pass a re-iterable (a list, or an "
            "object whose __iter__ returns a fresh iterator), not a generator/iterator"
        )


@dataclass
class _RangeStats:
    """Running per-tensor statistics of the range pass (merged like ORT's np.nanmin/nanmax)."""

    lowest: dict[str, np.ndarray] = field(default_factory=dict)
    highest: dict[str, np.ndarray] = field(default_factory=dict)
    max_size: dict[str, int] = field(default_factory=dict)
    abs_lowest: dict[str, np.ndarray] = field(default_factory=dict)
    batches: int = 0


def _merge(store: dict[str, np.ndarray], name: str, value: np.ndarray, reduce: Callable[..., np.ndarray]) -> None:
    # fmin/fmax ignore NaN like ORT's final np.nanmin/np.nanmax over all batches.
    store[name] = value.copy() if name not in store else reduce(store[name], value)


def _range_pass(
    observed: _Observed, batches: Iterable[Batch], providers: Sequence[str], counter: _RunCounter, threads: int | None = None
) -> _RangeStats:
    session = _session(observed.range_model_path, providers, threads)
    output_names = [o.name for o in session.get_outputs()]
    stats = _RangeStats()
    for batch in batches:
        outputs = dict(zip(output_names, session.run(None, batch), strict=True))
        for name in observed.tensors:
            # (1,) like ORT's ReduceMin -> Reshape([-1]) outputs.
            _merge(stats.lowest, name, outputs[name + _MIN_SUFFIX].reshape(-1), np.fmin)
            _merge(stats.highest, name, outputs[name + _MAX_SUFFIX].reshape(-1), np.fmax)
            if name + _SIZE_SUFFIX in outputs:
                stats.max_size[name] = max(stats.max_size.get(name, 0), int(outputs[name + _SIZE_SUFFIX]))
            if name + _ABS_MIN_SUFFIX in outputs:
                _merge(stats.abs_lowest, name, outputs[name + _ABS_MIN_SUFFIX].reshape(-1), np.fmin)
        del outputs
        stats.batches += 1
        counter.tick()
    if stats.batches == 0:
        raise ValueError("No data is collected: batches is empty.")
    return stats


# ------------------------------------------------------------------------- MinMax result


def _minmax_result(observed: _Observed, stats: _RangeStats, symmetric: bool) -> TensorsData:
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in observed.tensors:
        low, high = stats.lowest[name], stats.highest[name]
        if symmetric:  # same expression as MinMaxCalibrater.compute_data
            max_abs = np.nanmax([np.abs(low), np.abs(high)], axis=0)
            pairs[name] = (-max_abs, max_abs)
        else:
            pairs[name] = (low, high)
    return TensorsData(CalibrationMethod.MinMax, pairs)


# ----------------------------------------------------------------------- histogram pass


@dataclass
class _Histogram:
    """One tensor's fixed-range histogram, summed over batches."""

    bins: int
    value_range: tuple[Any, Any]
    absolute: bool
    counts: np.ndarray | None = None
    edges: np.ndarray | None = None

    binner: FixedRangeHistogram = field(init=False)

    def __post_init__(self) -> None:
        self.binner = FixedRangeHistogram(self.bins, self.value_range)

    def add(self, values: np.ndarray) -> None:
        # The counts of the np.histogram call ORT's one-shot collect makes, with the range it
        # would compute from all data (FixedRangeHistogram: the same counts, faster);
        # np.histogram bins element-wise, so sums are exact.
        flat = values.reshape(-1)
        counts = self.binner.counts(np.abs(flat) if self.absolute else flat)
        if self.counts is None:
            self.counts, self.edges = counts, self.binner.edges(flat.dtype)
        else:
            self.counts += counts


def _global_min_max(stats: _RangeStats, name: str) -> tuple[np.floating, np.floating]:
    # ORT's collector uses np.nanmin/np.nanmax of the data: numpy scalars of its dtype.
    low: np.floating = stats.lowest[name].min()
    high: np.floating = stats.highest[name].max()
    if _always_empty(stats, name):  # ReduceMin/Max of nothing is +inf/-inf; ORT's collector uses 0
        return low.dtype.type(0), high.dtype.type(0)
    return low, high


def _always_empty(stats: _RangeStats, name: str) -> bool:
    # e.g. Resize's empty `roi` constant; all its batches were empty.
    return stats.max_size.get(name) == 0


def _new_histogram(stats: _RangeStats, name: str, settings: _Settings) -> _Histogram:
    low, high = _global_min_max(stats, name)
    if settings.absolute_histogram:
        # collect_absolute_value: np.histogram(|x|, bins) => range (min|x|, max|x|),
        # which numpy makes (0, 1) for no data at all.
        if _always_empty(stats, name):
            return _Histogram(settings.num_bins, (low.dtype.type(0), low.dtype.type(1)), absolute=True)
        abs_range = (stats.abs_lowest[name].min(), np.maximum(np.abs(low), np.abs(high)))
        return _Histogram(settings.num_bins, abs_range, absolute=True)
    # collect_value: range (-t, t), t = max(|min|, |max|) as a 0-d array of the data dtype.
    threshold = np.array(max(np.abs(low), np.abs(high)), dtype=low.dtype)
    return _Histogram(settings.num_bins, (-threshold, threshold), absolute=False)


def _chunks(observed: _Observed, stats: _RangeStats, budget: int) -> list[list[str]]:
    """Group tensors (graph order) so one run returns at most ``budget`` bytes."""
    chunks: list[list[str]] = []
    current: list[str] = []
    used = 0
    for name in _graph_order(observed):
        if name in observed.graph_inputs:
            continue  # read from the feed itself, never a session output
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(observed.value_infos[name].type.tensor_type.elem_type).itemsize
        size = stats.max_size.get(name, 0) * itemsize
        if current and used + size > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        chunks.append(current)
    return chunks


def _graph_order(observed: _Observed) -> list[str]:
    wanted = set(observed.tensors)
    order = [i.name for i in observed.base_model.graph.input if i.name in wanted]
    for node in observed.base_model.graph.node:
        order.extend(o for o in node.output if o in wanted and o not in order)
    order.extend(t for t in observed.tensors if t not in order)  # safety: anything left
    return order


def _chunk_model(observed: _Observed, names: list[str], path: Path) -> None:
    """The base model cut down to what ``names`` depend on, with ``names`` as its outputs.

    ORT executes every node of a session's graph on each run, whatever outputs are
    fetched; chunks are in graph order, so pruning skips the rest of the network.
    """
    model = copy.deepcopy(observed.base_model)
    needed = set(names)
    kept: list[onnx.NodeProto] = []
    for node in reversed(model.graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(_consumed_names(node))
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))
    del model.graph.output[:]
    model.graph.output.extend(observed.value_infos[n] for n in names)
    initializers = [t for t in model.graph.initializer if t.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    _save_model(model, path)


def _consumed_names(node: onnx.NodeProto) -> set[str]:
    # Inputs plus everything referenced inside subgraphs (If/Loop/Scan bodies may use
    # outer-scope tensors); over-approximating only keeps a few extra nodes.
    names = set(node.input)
    for attr in node.attribute:
        for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in graph.node:
                names.update(_consumed_names(inner))
    return names


def _binning_threads(threads: int | None) -> int:
    return threads or os.cpu_count() or 1


def _histogram_pass(
    observed: _Observed,
    names: list[str],
    feed_names: list[str],
    histograms: dict[str, _Histogram],
    batches: Iterable[Batch],
    expected_batches: int,
    pass_index: int,
    work_dir: Path,
    providers: Sequence[str],
    counter: _RunCounter,
    threads: int | None = None,
) -> None:
    """One pass over the batches observing ``names`` (session outputs) and ``feed_names``."""
    path = work_dir / f"histogram_pass_{pass_index}.onnx"
    session = None
    if names:
        _chunk_model(observed, names, path)
        session = _session(path, providers, threads)
    seen = 0
    # Binning is numpy work on one core per tensor (it releases the GIL for most of it): the tensors of a
    # run are binned in parallel on the calibration's cores. Each tensor has its own counts, so the sums
    # do not depend on the order.
    workers = _binning_threads(threads)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in batches:
            seen += 1
            if session is not None:
                outputs = session.run(names, batch)
                pairs = sorted(zip(names, outputs, strict=True), key=lambda pair: -pair[1].size)  # largest first: even loads
                if workers > 1:
                    list(pool.map(lambda pair: histograms[pair[0]].add(pair[1]), pairs))
                else:  # in this thread: no hand-over, and a profiler sees the binning
                    for name, value in pairs:
                        histograms[name].add(value)
                del outputs, pairs
                counter.tick()
            for name in feed_names:  # graph inputs: no need to round-trip them through ORT
                histograms[name].add(np.asarray(batch[name]))
    if seen != expected_batches:  # the global ranges would not cover this data
        raise ValueError(f"batches yielded {expected_batches} feeds on the first pass but {seen} on pass {pass_index}")
    del session
    path.unlink(missing_ok=True)


def _histogram_dict(observed: _Observed, stats: _RangeStats, histograms: dict[str, _Histogram], settings: _Settings) -> dict[str, tuple]:
    """Entries in the exact layout of ORT's HistogramCollector.histogram_dict."""
    result: dict[str, tuple] = {}
    for name in observed.tensors:
        hist = histograms[name]
        assert hist.counts is not None and hist.edges is not None  # every pass saw >= 1 batch
        low, high = _global_min_max(stats, name)
        if settings.absolute_histogram:
            result[name] = (hist.counts, hist.edges.astype(low.dtype), low, high)
        else:
            result[name] = (hist.counts, hist.edges, low, high, hist.value_range[1])
    return result


def _histogram_result(
    observed: _Observed,
    stats: _RangeStats,
    batches: Iterable[Batch],
    settings: _Settings,
    work_dir: Path,
    providers: Sequence[str],
    counter: _RunCounter,
    threads: int | None = None,
) -> TensorsData:
    histograms = {name: _new_histogram(stats, name, settings) for name in observed.tensors}
    chunks = _chunks(observed, stats, settings.max_pass_bytes) or [[]]
    feed_names = [n for n in observed.tensors if n in observed.graph_inputs]
    for index, names in enumerate(chunks, start=1):
        feeds = feed_names if index == 1 else []
        _histogram_pass(observed, names, feeds, histograms, batches, stats.batches, index, work_dir, providers, counter, threads)
    collector = HistogramCollector(
        method=settings.method,
        symmetric=settings.symmetric,
        num_bins=settings.num_bins,
        num_quantized_bins=settings.num_quantized_bins,
        percentile=settings.percentile,
        scenario=settings.scenario,
    )
    collector.histogram_dict = _histogram_dict(observed, stats, histograms, settings)
    return TensorsData(CALIBRATION_METHODS[settings.method], collector.compute_collection_result())


# ------------------------------------------------------------------------------ public


def collect_ranges(
    model_path: Path,
    batches: Iterable[Batch],
    method: Method,
    *,
    percentile: float = 99.999,
    num_bins: int | None = None,
    num_quantized_bins: int = 128,
    symmetric: bool | None = None,
    scenario: str = "same",
    op_types_to_calibrate: Sequence[str] | None = None,
    work_dir: Path,
    max_pass_bytes: int = _DEFAULT_MAX_PASS_BYTES,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
) -> TensorsData:
    """Compute activation ranges batch by batch, as ORT's calibrators would, in bounded memory.

    * ``batches``: input feeds; shapes may differ between batches. MinMax reads them once
      (any iterable); histogram methods read them ``1 + #chunks`` times, so they need a
      list or another re-iterable yielding the same feeds each time (a generator or
      other one-shot iterator raises ``TypeError`` up front).
    * ``num_bins`` / ``symmetric``: ``None`` means ``quantize_static``'s defaults
      (entropy 128 bins, percentile/distribution 2048; symmetric only for percentile).
    * ``op_types_to_calibrate``: ``None`` observes every float tensor (ORT calibrator
      semantics); ``quantize_static_default_op_types()`` mirrors ``quantize_static``.
    * ``max_pass_bytes``: histogram methods observe tensors in chunks whose summed
      largest per-batch size stays below this (one tensor larger than it gets its own pass).
    * ``progress``: called after every session run with the running count of runs.
    * ``threads``: onnxruntime intra-op threads (``None``: its default, every core). Unoptimised
      graphs can give other last bits with another thread count, so pin it for reproducible ranges.

    Returns ORT's ``TensorsData``: MinMax ranges equal ``MinMaxCalibrater``'s exactly; for
    fixed shapes the histograms and thresholds equal ORT's Entropy/Percentile/
    Distribution calibraters' (same histogram range and ORT's own threshold code).
    """
    settings = _resolve_settings(method, symmetric, num_bins, num_quantized_bins, percentile, scenario, max_pass_bytes)
    if settings.method != "minmax":
        _require_reiterable(batches)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    counter = _RunCounter(progress)
    observed = _prepare_models(Path(model_path), op_types_to_calibrate, settings, work_dir)
    stats = _range_pass(observed, batches, providers, counter, threads)
    if settings.method == "minmax":
        return _minmax_result(observed, stats, settings.symmetric)
    return _histogram_result(observed, stats, batches, settings, work_dir, providers, counter, threads)


def quantize_with_ranges(
    model_path: Path,
    out_path: Path,
    ranges: TensorsData,
    *,
    quant_format: QuantFormat = QuantFormat.QDQ,
    activation_type: QuantType = QuantType.QInt8,
    weight_type: QuantType = QuantType.QInt8,
    per_channel: bool = False,
    reduce_range: bool = False,
    op_types_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] | None = None,
    nodes_to_quantize: Sequence[str] | None = None,
    extra_options: dict[str, Any] | None = None,
    use_external_data_format: bool = False,
) -> None:
    """Quantize with precomputed ranges through ``quantize_static`` itself.

    ``quantize_static``'s ``calibration_cache_path`` (ORT PR #28221) skips calibration when
    the file exists, so writing ``ranges`` there in ORT's own cache format runs exactly
    quantize_static's tail (opset update, QDQQuantizer/ONNXQuantizer, save): same output
    as ``quantize_static`` calibrating to the same ranges.
    """
    options = dict(extra_options or {})
    if options.get("SmoothQuant", False):
        raise ValueError("SmoothQuant transforms the model with calibration data; it cannot use precomputed ranges")
    with tempfile.TemporaryDirectory(prefix="quant-ranges-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        quantize_static(
            str(model_path),
            str(out_path),
            calibration_data_reader=None,
            quant_format=quant_format,
            op_types_to_quantize=list(op_types_to_quantize) if op_types_to_quantize else None,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=activation_type,
            weight_type=weight_type,
            nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize else None,
            nodes_to_exclude=list(nodes_to_exclude) if nodes_to_exclude else None,
            use_external_data_format=use_external_data_format,
            calibrate_method=ranges.calibration_method,
            extra_options=options,
            calibration_cache_path=cache,
        )


def ranges_to_json(ranges: TensorsData) -> dict[str, Any]:
    """JSON-ready dict in ORT's calibration-cache format (``save_tensors_data``'s payload)."""
    return json.loads(json.dumps(ranges, cls=CalibrationCacheEncoder))


def ranges_from_json(data: dict[str, Any]) -> TensorsData:
    """Inverse of :func:`ranges_to_json` (also reads ``quantize_static`` cache files)."""
    return TensorsData.from_dict(data)
