"""Weight-rounding sensitivity: which nodes' FP16 weights move the model's outputs most, per value kept in FP32.

Why: a model can fail FP16 with nothing near FP16's range (PP-OCRv5 det: the scan flags nothing, yet rounding
only the weights to FP16, computing in FP32, already costs map IoU 0.996). Then it is the rounding of the
weights, not an overflow, and some nodes matter far more per stored value than others: a scalar scale
multiplies a whole tensor by the same rounding error (it does not average out), and the first convolutions
work at full resolution, so their error reaches every later layer.

Each weighted node is measured alone: its float initializers rounded to FP16 (nearest, clamped at 65504),
everything else and all computation in FP32, and the change of every output vs FP32 (mean squared, summed over
outputs, averaged over the samples). Nodes are ranked by that change per float value keeping them in FP32
would cost (plus a fixed allowance for the casts around a kept node), so the cheapest large effects come first.
The measure reads samples from the tuning side only; the repair search then validates node sets from this
ranking with the variant's gates.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from quant.data.feeds import checked_feeds
from quant.data.sources import Feeds, SampleSource
from quant.executor import run_isolated
from quant.methods.base import Dims
from quant.model import file_sha256

FP16_MAX = 65504.0
CAST_ALLOWANCE = 256  # values (2 bytes each): what keeping a node in FP32 adds besides its weights (Casts, value infos; ~600 bytes measured)
RANKING_VERSION = 1  # part of the cache key: bump when the measure changes


@dataclass(frozen=True)
class RoundingCost:
    """What rounding one node's weights to FP16 does to the outputs, and what keeping them in FP32 costs."""

    node: str
    op_type: str
    values: int  # float weight values the node reads
    output_change: float  # mean squared change of the outputs vs FP32 with only this node's weights rounded

    @property
    def per_value(self) -> float:
        return self.output_change / (self.values + CAST_ALLOWANCE)


@dataclass
class RoundingRanking:
    costs: list[RoundingCost]  # highest change per value first
    samples: int
    seconds: float = 0.0
    cache_hit: bool = False

    def nodes(self) -> list[str]:
        return [c.node for c in self.costs if c.output_change > 0]

    def to_dict(self, limit: int = 20) -> dict[str, Any]:
        total = sum(c.output_change for c in self.costs) or 1.0
        top = [{**asdict(c), "share": round(c.output_change / total, 4)} for c in self.costs[:limit]]
        timing = {"seconds": round(self.seconds, 3), "cache_hit": self.cache_hit}
        return {"samples": self.samples, **timing, "nodes_measured": len(self.costs), "top": top}


def weighted_nodes(model: onnx.ModelProto, skip: set[str], skip_ops: set[str]) -> dict[str, list[str]]:
    """Node name -> the float initializers it reads, for every node a plain conversion would round (not in `skip`/`skip_ops`)."""
    floats = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    found: dict[str, list[str]] = {}
    for node in model.graph.node:
        read = [name for name in node.input if name in floats]
        if read and node.name not in skip and node.op_type not in skip_ops:
            found[node.name] = read
    return found


def with_rounded(model: onnx.ModelProto, initializers: set[str]) -> onnx.ModelProto:
    """A copy whose named float initializers hold their FP16 values (as FP32: the computation stays FP32)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.name in initializers:
            values = numpy_helper.to_array(tensor)
            rounded = np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(rounded, tensor.name))
    return copy


def _outputs(model: onnx.ModelProto, feeds: list[Feeds], threads: int) -> list[list[np.ndarray]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in feeds]


def _change(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    per_sample = [
        sum(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) for a, b in zip(ref, cand) if a.dtype.kind == "f")
        for ref, cand in zip(reference, candidate)
    ]
    return float(np.mean(per_sample))


def rounding_costs(model_path: Path, feeds: list[Feeds], skip: set[str], skip_ops: set[str], threads: int = 1) -> list[RoundingCost]:
    """Every weighted node's cost, ranked: highest output change per value kept in FP32 first (one pass per node)."""
    model = onnx.load(str(model_path))
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    ops = {n.name: n.op_type for n in model.graph.node}
    reference = _outputs(model, feeds, threads)
    costs = []
    for node, read in weighted_nodes(model, skip, skip_ops).items():
        change = _change(reference, _outputs(with_rounded(model, set(read)), feeds, threads))
        costs.append(RoundingCost(node, ops[node], sum(sizes[name] for name in read), change))
    return sorted(costs, key=lambda c: (-c.per_value, c.node))


def _in_child(model_path: Path, source: SampleSource, model_inputs: dict[str, Dims], skip: list[str], skip_ops: list[str]) -> RoundingRanking:
    started = time.perf_counter()
    feeds = [feed for _, feed in checked_feeds(source, model_inputs)]
    costs = rounding_costs(model_path, feeds, set(skip), set(skip_ops))
    return RoundingRanking(costs, len(feeds), time.perf_counter() - started)


def rounding_ranking(
    model_path: Path, source: SampleSource, model_inputs: dict[str, Dims], skip: list[str], skip_ops: list[str], cache_dir: Path
) -> RoundingRanking:
    """The ranking for this FP32 model on these samples; measured in a child process, cached by model bytes, samples and skips."""
    settings = f"{file_sha256(model_path)}|{source.fingerprint}|{source.feeds_signature}|{sorted(skip)}|{sorted(skip_ops)}|v{RANKING_VERSION}"
    cache_file = cache_dir / "fp16-rounding" / f"{hashlib.sha256(settings.encode()).hexdigest()[:32]}.json"
    if cache_file.is_file():
        data = json.loads(cache_file.read_text(encoding="utf-8"))
        return RoundingRanking([RoundingCost(**c) for c in data["costs"]], data["samples"], 0.0, cache_hit=True)
    ranking, _ = run_isolated(_in_child, model_path, source, model_inputs, skip, skip_ops)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    staging = cache_file.with_name(cache_file.name + f".tmp{os.getpid()}")
    staging.write_text(json.dumps({"costs": [asdict(c) for c in ranking.costs], "samples": ranking.samples}), encoding="utf-8")
    os.replace(staging, cache_file)  # a crash never leaves half a cache entry
    return ranking
