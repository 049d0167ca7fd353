"""Per-node sensitivity of a QDQ model: which quantized nodes add the most error vs FP32.

Activations of the float and the QDQ model are matched by tensor name (as qdq_loss_debug does).
Error accumulates through the network, so a node is ranked by the error it *adds*: the relative
error of its output minus the worst relative error of its activation inputs. Ranking by the
accumulated error alone would blame the last nodes for what the first ones did.

The relative error is averaged over channels: one large channel must not hide that every other
channel of a tensor was destroyed, and one near-empty channel must not drown the rest.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort

from quant.data.sources import Feeds

# The recipe's `fallback.ranking_memory_mb` default: memory for the tensors a ranking compares, per model and sample
# (PP-OCRv4 det's, Conv inputs and outputs, on its largest tuning page: 384 MB; rec's fit in one group).
RANKING_MEMORY_MB = 256


@dataclass(frozen=True)
class NodeSensitivity:
    node: str
    op_type: str
    added_error: float  # relative L2 error at the output minus the worst at its inputs
    output_error: float  # relative L2 error of the output vs FP32 (accumulated)
    sqnr_db: float  # SQNR of the output vs FP32, for people

    def to_dict(self) -> dict[str, object]:
        return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in asdict(self).items()}


def quantized_node_names(qdq_model: onnx.ModelProto) -> set[str]:
    """Float-domain nodes that the QDQ model wraps in Q/DQ (their inputs come from DequantizeLinear)."""
    dequantized = {out for n in qdq_model.graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    return {
        n.name for n in qdq_model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dequantized for i in n.input)
    }


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of float32 tensors, by ONNX shape inference (Shape/Cast outputs and the like are not activations)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    return {v.name for v in infos if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def _with_outputs(model_path: Path, names: list[str]) -> onnx.ModelProto:
    """The model with every named intermediate tensor exposed as a graph output."""
    model = onnx.load(str(model_path))
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in existing)
    return model


def _tensor_bytes(model: onnx.ModelProto, names: list[str], feeds: list[Feeds]) -> dict[str, int | None]:
    """Each named tensor's largest size over the feeds, in bytes (None: shape inference could not tell).

    By ONNX shape inference with each feed's input shapes pinned, before anything runs: learning the
    sizes from a first run would need that run to hold every tensor at once, the peak this avoids, and
    the samples differ in shape (det pages), so one sample's sizes would not bound the others'."""
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    del pinned.graph.value_info[:]  # the shapes stored in the file would win over the pinned inputs
    largest: dict[str, int | None] = dict.fromkeys(names, 0)
    for shapes in {tuple((name, tuple(value.shape)) for name, value in sorted(feed.items())) for feed in feeds}:
        for graph_input in pinned.graph.input:
            if graph_input.name in dict(shapes):
                dims = graph_input.type.tensor_type.shape.dim
                del dims[:]
                dims.extend(onnx.TensorShapeProto.Dimension(dim_value=d) for d in dict(shapes)[graph_input.name])
        inferred = onnx.shape_inference.infer_shapes(pinned, data_prop=True).graph
        known = {}
        for info in (*inferred.value_info, *inferred.output):
            tensor = info.type.tensor_type
            if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
                known[info.name] = itemsize * math.prod(d.dim_value for d in tensor.shape.dim)
        for name in names:
            size, before = known.get(name), largest[name]
            largest[name] = None if size is None or before is None else max(before, size)
    return largest


def tensor_groups(model: onnx.ModelProto, names: list[str], feeds: list[Feeds], memory_mb: float) -> list[list[str]]:
    """`names` (in their order) cut into consecutive groups whose tensors fit `memory_mb` together on any one feed.

    A tensor larger than the budget is a group of its own. A tensor shape inference cannot size counts as
    the largest one it could (activations of one network are of a kind); with none sized, one group."""
    sizes = _tensor_bytes(model, names, feeds)
    guess = max((s for s in sizes.values() if s is not None), default=0)
    budget = memory_mb * 2**20
    groups: list[list[str]] = []
    held = math.inf
    for name in names:
        size = guess if sizes[name] is None else sizes[name]
        if held + size > budget:
            groups.append([])
            held = 0
        groups[-1].append(name)
        held += size
    return groups


def _exposing(model: onnx.ModelProto, group: list[str], path: Path) -> Path:
    """The model with `group` as its outputs, cut down to the nodes computing them (nothing after them runs).

    Not cut with control flow: a subgraph reads outer tensors that onnx's Extractor does not follow."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in model.graph.node for a in n.attribute):
        cut = onnx.ModelProto()
        cut.CopyFrom(model)
        kept = [o for o in cut.graph.output if o.name in set(group)]
        del cut.graph.output[:]
        cut.graph.output.extend(kept)
    else:
        cut = onnx.utils.Extractor(model).extract_model([i.name for i in model.graph.input], group)
    onnx.save(cut, str(path))
    return path


def _channel_axis(shape: tuple[int, ...]) -> int:
    # NCHW feature maps carry channels on axis 1; sequences (N, T, C) and matrices on the last axis.
    return 1 if len(shape) == 4 else len(shape) - 1


class _ChannelErrors:
    """Running per-channel sums of signal and noise energy for one tensor, sample after sample."""

    def __init__(self, chunk_values: int = 2**21) -> None:
        self.chunk_values = chunk_values  # values converted to float64 at a time (16 MB), whole channels at least
        self.signal: np.ndarray | None = None
        self.noise: np.ndarray | None = None
        self.mismatched = False

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        if reference.shape != candidate.shape or reference.ndim == 0:
            self.mismatched = reference.shape != candidate.shape
            return
        axis = _channel_axis(reference.shape)
        channels = reference.shape[axis]
        # A few channels at a time: the float64 copies of a whole 736-px det map took ~240 MB at once. Each
        # channel's row is summed as before (same values, same order), so the sums are the same to the bit.
        step = max(1, self.chunk_values // max(reference.size // channels, 1))
        signals, noises = [], []
        for start in range(0, channels, step):
            rows = (np.moveaxis(t, axis, 0)[start : start + step].astype(np.float64, order="C") for t in (reference, candidate))
            ref, cand = (r.reshape(r.shape[0], -1) for r in rows)
            signals.append((ref**2).sum(axis=1))
            noises.append(((ref - cand) ** 2).sum(axis=1))
        signal, noise = np.concatenate(signals), np.concatenate(noises)
        if self.signal is None or self.signal.shape != signal.shape:
            self.signal, self.noise = signal, noise
        else:
            self.signal += signal
            self.noise += noise

    def relative_error(self) -> float:
        """Mean over channels of ||ref - cand|| / ||ref||.

        A channel's norm is floored at a tenth of the median channel's: near-dead channels would
        otherwise turn rounding noise into huge relative errors."""
        if self.mismatched:
            return math.inf
        if self.signal is None or self.noise is None:
            return 0.0
        signal, noise = np.sqrt(self.signal), np.sqrt(self.noise)
        floor = max(0.1 * float(np.median(signal)), 1e-12)
        return float((noise / np.maximum(signal, floor)).mean())


def _tensor_errors(
    float_model: Path, qdq_model: Path, names: list[str], feeds: list[Feeds], memory_mb: float, log: Callable[[str], None] | None = None
) -> dict[str, float]:
    """Relative error of every named tensor, qdq vs float, accumulated over the samples in bounded memory.

    (onnxruntime's qdq_loss_debug flattens every tensor and keeps all of them for all samples:
    the channel axis is needed here, and memory must not grow with the samples.) An exposed tensor is
    held until the run ends, so the names are compared a group at a time, each group's tensors within
    `memory_mb` per model and sample: one pass over the samples per group, each sample's accumulation
    order unchanged (the same sums, the same ranking, whatever the grouping)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor by its name
    options.log_severity_level = 3
    # Without the arena a run's exposed tensors go back to the system when their arrays do (the arrays share
    # onnxruntime's buffers); the arena kept them, and its growth, for the next group (det at 256 MB: 1175 -> 957 MB).
    options.enable_cpu_mem_arena = False
    exposed = {side: _with_outputs(path, names) for side, path in (("reference", float_model), ("candidate", qdq_model))}
    errors = {name: _ChannelErrors() for name in names}
    with tempfile.TemporaryDirectory(prefix="quant-sensitivity-") as scratch_dir:
        groups = tensor_groups(exposed["reference"], names, feeds, memory_mb)
        if log:
            log(f"ranking: {len(names)} tensors compared in {len(groups)} group(s) of at most {memory_mb:g} MB per model and sample")
        for index, group in enumerate(groups):
            paths = {side: _exposing(model, group, Path(scratch_dir) / f"{side}-{index}.onnx") for side, model in exposed.items()}
            reference, candidate = (ort.InferenceSession(str(paths[side]), options, providers=["CPUExecutionProvider"]) for side in exposed)
            for feed in feeds:
                for name, ref, cand in zip(group, reference.run(group, feed), candidate.run(group, feed)):
                    errors[name].add(ref, cand)
            del reference, candidate  # this group's sessions (and their arenas) go before the next group's come
    return {name: e.relative_error() for name, e in errors.items()}


def rank_nodes(
    float_model: Path,
    qdq_model: Path,
    feeds: list[Feeds],
    op_types: list[str] | None = None,
    memory_mb: float = RANKING_MEMORY_MB,
    log: Callable[[str], None] | None = None,
) -> list[NodeSensitivity]:
    """Quantized nodes of `qdq_model` (of `op_types` when given), the ones adding most error first.

    The compared tensors are held `memory_mb` per model and sample at most (more take more passes).

    Only nodes the quantizer was asked to quantize are candidates: a float op that merely reads a
    dequantized tensor (a HardSigmoid after a quantized Conv) changes nothing when "excluded"."""
    quantized = onnx.load(str(qdq_model), load_external_data=False)
    candidates = {n.name for n in quantized.graph.node if n.name in quantized_node_names(quantized) and (not op_types or n.op_type in op_types)}
    qdq_tensors = {o for n in quantized.graph.node for o in n.output}
    float_proto = onnx.load(str(float_model), load_external_data=False)
    float_graph = float_proto.graph
    graph_inputs = {i.name for i in float_graph.input}
    # Tensors both graphs compute under the same name: float outputs of float nodes that survived quantization.
    # Only what the ranking reads, the candidates' outputs and inputs: every name asked for is held for both models at
    # once (all tensors of PP-OCRv4 rec on 8 tuning lines: a 757 MB process; these: 306 MB, same ranking).
    needed = {t for n in float_graph.node if n.name in candidates for t in (*n.input, *n.output[:1])}
    compared = set(_float_tensors(float_proto)) & qdq_tensors & needed
    # In graph order: a group then ends where its last tensor is made, and what comes after is not run for it.
    names = list(dict.fromkeys(o for n in float_graph.node for o in n.output if o in compared))
    errors = {**{name: 0.0 for name in graph_inputs}, **_tensor_errors(float_model, qdq_model, names, feeds, memory_mb, log)}
    ranking = []
    for node in float_graph.node:
        if node.name not in candidates or not node.output or node.output[0] not in errors:
            continue
        out_error = errors[node.output[0]]
        in_error = max((errors[i] for i in node.input if i in errors), default=0.0)
        sqnr = -20 * math.log10(out_error) if 0 < out_error < math.inf else (math.inf if out_error == 0 else -math.inf)
        ranking.append(NodeSensitivity(node.name, node.op_type, out_error - in_error, out_error, sqnr))
    return sorted(ranking, key=lambda n: n.added_error, reverse=True)
