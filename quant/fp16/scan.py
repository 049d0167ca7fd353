"""The FP16 pre-flight: what in this model cannot be held in FP16, found before anything is built.

Three kinds of findings, each naming the nodes that must stay in FP32 to avoid it:

* initializers with values beyond FP16's largest finite value (65504): a converter clamps them and the
  model answers differently while every output stays finite (PP-OCRv4 det: a BatchNormalization variance
  of 9.79e7); and small initializers whose values FP16 cannot hold to 10 % where an offset or divisor is
  read (an epsilon added before a Sqrt).
* activations: every float tensor's running |x|max over the calibration (tuning) samples, streamed batch
  by batch with the static-INT8 calibration machinery (bounded memory). Headroom = 65504 / |x|max.
* the inside of normalisations and reductions, which the graph's tensors do not show: the sum a ReduceMean
  or an average pool accumulates (|mean|max x count), the squares a LayerNormalization forms (|x|max²,
  the `Pow` of a decomposed LayerNorm, onnxruntime issue 31626), and the sum of exponentials in a Softmax
  (at most the reduced count). Kernels that accumulate in FP16 overflow there although no tensor does.

The counts (elements reduced) are measured, not guessed from static shapes: small probe nodes computing
them are added to the scanned copy of the model and observed like any other tensor.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quant.calibration.streaming import collect_ranges
from quant.model import default_opset

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
FP16_TINY = 2.0**-24  # the smallest FP16 subnormal
SIGNIFICANT = 1e-3  # values smaller than this fraction of their tensor's |x|max do not matter when lost
LOST_RELATIVE_ERROR = 0.1  # an FP16 copy of a value further off than this no longer means the same value
COUNT_SUFFIX = "__fp16_scan_count"

MEAN_REDUCTIONS = ("ReduceMean", "GlobalAveragePool")
SUM_REDUCTIONS = ("ReduceSum", "ReduceSumSquare", "ReduceL1")
SQUARE_REDUCTIONS = ("ReduceL2",)  # the output is sqrt of the accumulated sum of squares
LAST_AXES = ("LayerNormalization",)
SOFTMAX = ("Softmax", "LogSoftmax")
OFFSET_READERS = ("Add", "Sub", "Div", "Pow", "Sqrt", "Reciprocal")  # where a tiny constant's exact value matters

Kind = Literal["initializer_overflow", "initializer_underflow", "activation", "accumulator"]


@dataclass(frozen=True)
class Finding:
    """One place FP16 may not hold the model's values, and the nodes that must stay FP32 to avoid it."""

    kind: Kind
    tensor: str
    op_type: str  # the op that produces (activation), reads (initializer) or accumulates it
    nodes: tuple[str, ...]
    abs_max: float  # |x|max, or the accumulated value for `accumulator`
    headroom: float  # FP16_MAX / abs_max: below 1 it overflows; inf for underflow findings
    flagged: bool  # kept in FP32 by the repair from the start
    why: str

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["nodes"] = list(self.nodes)
        for key in ("abs_max", "headroom"):
            value = record[key]
            record[key] = value if math.isfinite(value) else None
        return record


@dataclass
class Preflight:
    """The scan's result: findings ranked worst first, and what it cost."""

    findings: list[Finding]
    headroom_threshold: float
    samples: int
    tensors_observed: int
    seconds: float = 0.0
    cache_hit: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged_nodes(self) -> list[str]:
        """Nodes the scan says must stay in FP32, worst finding first."""
        return list(dict.fromkeys(n for f in self.findings if f.flagged for n in f.nodes))

    def ranked_candidates(self) -> list[str]:
        """Nodes a search may add beyond the flagged set, in the findings' order: tensors by headroom (worst first), then accumulators."""
        return list(dict.fromkeys(n for f in self.findings for n in f.nodes))

    def to_dict(self, limit: int = 40) -> dict[str, Any]:
        return {
            "headroom_threshold": self.headroom_threshold,
            "samples": self.samples,
            "tensors_observed": self.tensors_observed,
            "seconds": round(self.seconds, 3),
            "cache_hit": self.cache_hit,
            "flagged_nodes": self.flagged_nodes,
            "findings": [f.to_dict() for f in self.findings if f.kind != "accumulator"][:limit]
            + [f.to_dict() for f in self.findings if f.kind == "accumulator"][: limit // 4],
            "findings_total": len(self.findings),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preflight:
        findings = [
            Finding(**{**f, "nodes": tuple(f["nodes"]), "abs_max": _finite(f["abs_max"]), "headroom": _finite(f["headroom"])})
            for f in data["findings_all"]
        ]
        return cls(findings, data["headroom_threshold"], data["samples"], data["tensors_observed"], data.get("seconds", 0.0))


def _finite(value: float | None) -> float:
    return math.inf if value is None else float(value)


def _headroom(abs_max: float) -> float:
    return FP16_MAX / abs_max if abs_max > 0 else math.inf


class _Graph:
    """Producer and consumer lookups over a graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in dict.fromkeys(node.input):
                self.consumers.setdefault(name, []).append(node)


# --------------------------------------------------------------------------- initializers


def _fp16_copy(values: np.ndarray) -> np.ndarray:
    """What the converter writes (values clamped to the FP16 range, tiny ones raised to the smallest subnormal)."""
    magnitude = np.clip(np.abs(values), FP16_TINY, FP16_MAX)
    return (np.sign(values) * magnitude).astype(np.float16).astype(np.float32)


def initializer_findings(model: onnx.ModelProto) -> list[Finding]:
    graph = _Graph(model.graph)
    findings: list[Finding] = []
    for tensor in model.graph.initializer:
        if tensor.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(tensor).astype(np.float32).reshape(-1)
        readers = graph.consumers.get(tensor.name, [])
        if values.size == 0 or not readers:
            continue
        abs_max = float(np.abs(values).max())
        nodes = tuple(n.name for n in readers)
        op_type = readers[0].op_type
        if abs_max > FP16_MAX:
            over = int(np.count_nonzero(np.abs(values) > FP16_MAX))
            findings.append(
                Finding("initializer_overflow", tensor.name, op_type, nodes, abs_max, _headroom(abs_max), True,
                        f"{over} value(s) beyond FP16's 65504 (|x|max {abs_max:.4g}) would be clamped")
            )
            continue
        nonzero = values[values != 0]
        if nonzero.size == 0:
            continue
        # Lost: FP16 cannot hold it to 10 %, and it is not negligible next to the tensor's largest value
        # (a Conv weight of 1e-40 beside weights of 1 changes nothing when it becomes 6e-8; an epsilon does).
        lost = (np.abs(_fp16_copy(nonzero) - nonzero) > LOST_RELATIVE_ERROR * np.abs(nonzero)) & (np.abs(nonzero) >= SIGNIFICANT * abs_max)
        lost_count = int(np.count_nonzero(lost))
        read_as_offset = any(n.op_type in OFFSET_READERS for n in readers)
        if lost_count and (read_as_offset or lost_count > 0.01 * nonzero.size):
            findings.append(
                Finding("initializer_underflow", tensor.name, op_type, nodes, abs_max, math.inf, True,
                        f"{lost_count} of {nonzero.size} non-zero value(s) below FP16's range (min |x| {float(np.abs(nonzero).min()):.3g})")
            )
    return findings


# --------------------------------------------------------------------------- count probes


def _count_probe(node: onnx.NodeProto, opset: int) -> list[onnx.NodeProto]:
    """Nodes computing, as a float tensor, how many elements `node` reduces into each output value."""
    out = f"{node.name}{COUNT_SUFFIX}"
    prefix = f"{node.name}{COUNT_SUFFIX}_"
    x = node.input[0]
    if node.op_type in MEAN_REDUCTIONS + SUM_REDUCTIONS + SQUARE_REDUCTIONS:
        return [
            helper.make_node("Size", [x], [prefix + "in"], name=prefix + "in"),
            helper.make_node("Size", [node.output[0]], [prefix + "out"], name=prefix + "out"),
            helper.make_node("Cast", [prefix + "in"], [prefix + "inf"], name=prefix + "inf", to=TensorProto.FLOAT),
            helper.make_node("Cast", [prefix + "out"], [prefix + "outf"], name=prefix + "outf", to=TensorProto.FLOAT),
            helper.make_node("Div", [prefix + "inf", prefix + "outf"], [out], name=out),
        ]
    if opset < 11:  # Slice/Gather with negative indices and constant-input Slice need opset 11
        return []
    default_axis = -1 if node.op_type in LAST_AXES or opset >= 13 else 1
    axis = next((a.i for a in node.attribute if a.name == "axis"), default_axis)
    one_axis = node.op_type in SOFTMAX and opset >= 13  # Softmax-13 reduces one axis; older ones and LayerNorm flatten from axis on
    end = axis + 1 if one_axis and axis != -1 else 2**62
    return [
        helper.make_node("Shape", [x], [prefix + "shape"], name=prefix + "shape"),
        helper.make_node("Constant", [], [prefix + "start"], name=prefix + "start", value=helper.make_tensor("v", TensorProto.INT64, [1], [axis])),
        helper.make_node("Constant", [], [prefix + "end"], name=prefix + "end", value=helper.make_tensor("v", TensorProto.INT64, [1], [end])),
        helper.make_node("Slice", [prefix + "shape", prefix + "start", prefix + "end"], [prefix + "dims"], name=prefix + "dims"),
        helper.make_node("ReduceProd", [prefix + "dims"], [prefix + "count"], name=prefix + "count", keepdims=0),
        helper.make_node("Cast", [prefix + "count"], [out], name=out, to=TensorProto.FLOAT),
    ]


def with_count_probes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose reductions each get a float `<node>__fp16_scan_count` tensor (elements per output)."""
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    opset = default_opset(probed)
    nodes: list[onnx.NodeProto] = []
    for node in probed.graph.node:
        nodes.append(node)
        if node.op_type in MEAN_REDUCTIONS + SUM_REDUCTIONS + SQUARE_REDUCTIONS + LAST_AXES + SOFTMAX and node.input and node.output:
            probe = _count_probe(node, opset)
            nodes.extend(probe)
            if probe:
                probed.graph.output.append(helper.make_tensor_value_info(probe[-1].output[0], TensorProto.FLOAT, None))
    del probed.graph.node[:]
    probed.graph.node.extend(nodes)
    return probed


# --------------------------------------------------------------------------- activations


def _abs_max(ranges: dict[str, tuple[float, float]], name: str) -> float | None:
    if name not in ranges:
        return None
    low, high = ranges[name]
    value = max(abs(low), abs(high))
    return value if math.isfinite(value) else math.inf


def activation_findings(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], threshold: float) -> list[Finding]:
    """Findings from observed per-tensor ranges (of the model with count probes)."""
    graph = _Graph(model.graph)
    outputs = {o.name for o in model.graph.output}
    findings: list[Finding] = []
    for name in ranges:
        if COUNT_SUFFIX in name:
            continue
        abs_max = _abs_max(ranges, name)
        if abs_max is None or abs_max == 0:
            continue
        producer = graph.producer.get(name)
        # The value must be FP32 where it is made and where it is read: a Cast to FP16 in between overflows too.
        readers = [n.name for n in graph.consumers.get(name, []) if n.name]
        nodes = tuple(dict.fromkeys([*([producer.name] if producer is not None else []), *readers]))
        if not nodes:
            continue
        headroom = _headroom(abs_max)
        where = "graph output" if name in outputs else "tensor"
        findings.append(
            Finding("activation", name, producer.op_type if producer is not None else "input", nodes, abs_max, headroom, headroom < threshold,
                    f"{where} reaches |x| {abs_max:.4g} on the tuning samples")
        )
    for node in model.graph.node:
        count = _abs_max(ranges, f"{node.name}{COUNT_SUFFIX}")
        if count is None:
            continue
        if node.op_type in MEAN_REDUCTIONS:
            mean = _abs_max(ranges, node.output[0]) or 0.0
            inside, why = mean * count, f"sums {count:.0f} values of |mean| up to {mean:.4g} before dividing"
        elif node.op_type in SQUARE_REDUCTIONS:
            norm = _abs_max(ranges, node.output[0]) or 0.0
            inside, why = norm * norm, f"accumulates squares up to {norm * norm:.4g} before the square root"
        elif node.op_type in LAST_AXES:
            x = _abs_max(ranges, node.input[0]) or 0.0
            inside, why = x * x, f"squares inputs up to |x| {x:.4g} over {count:.0f} values (the Pow of a decomposed LayerNorm)"
        elif node.op_type in SOFTMAX:
            inside, why = count, f"sums up to {count:.0f} exponentials"
        else:  # plain sums: the output tensor is the accumulated value, already an activation finding
            continue
        if inside == 0:
            continue
        headroom = _headroom(inside)
        # Reported, not kept in FP32 up front: it only overflows in kernels that accumulate in FP16 (onnxruntime's
        # CPU kernels accumulate in FP32), and the repair's validation shows whether this one does.
        findings.append(Finding("accumulator", node.output[0], node.op_type, (node.name,), inside, headroom, False, why))
    return findings


def _ranges(model_path: Path, batches: Iterable[dict[str, np.ndarray]], work_dir: Path) -> dict[str, tuple[float, float]]:
    data = collect_ranges(model_path, batches, "minmax", op_types_to_calibrate=None, work_dir=work_dir)
    return {name: (float(np.min(item.range_value[0])), float(np.max(item.range_value[1]))) for name, item in data.data.items()}


def scan(model_path: Path, batches: Iterable[dict[str, np.ndarray]], threshold: float) -> Preflight:
    """Scan a (normalised) FP32 model on the given input feeds; nothing is converted or built."""
    model = onnx.load(str(model_path))
    counter = _Counting(batches)
    with tempfile.TemporaryDirectory(prefix="quant-fp16-scan-") as scratch:
        probed_path = Path(scratch) / "probed.onnx"
        onnx.save(with_count_probes(model), str(probed_path))
        ranges = _ranges(probed_path, counter, Path(scratch))
    findings = initializer_findings(model) + activation_findings(model, ranges, threshold)
    # Flagged first, then the graph's own tensors by headroom, then the inside of reductions (reported, never flagged).
    findings.sort(key=lambda f: (not f.flagged, f.kind == "accumulator", f.headroom if f.kind != "initializer_underflow" else 0.0, f.tensor))
    observed = sum(COUNT_SUFFIX not in name for name in ranges)
    return Preflight(findings, threshold, counter.count, observed)


class _Counting:
    """Feeds passed through, counted (the scan reports how many samples it saw)."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]]) -> None:
        self.batches = batches
        self.count = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.count = 0
        for feeds in self.batches:
            self.count += 1
            yield feeds
