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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from quant.data.sources import Feeds


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


def _with_outputs(model_path: Path, names: list[str], scratch: Path) -> Path:
    """The model with every named intermediate tensor exposed as a graph output."""
    model = onnx.load(str(model_path))
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in existing)
    path = scratch / f"{model_path.stem}.observed.onnx"
    onnx.save(model, str(path))
    return path


def _channel_axis(shape: tuple[int, ...]) -> int:
    # NCHW feature maps carry channels on axis 1; sequences (N, T, C) and matrices on the last axis.
    return 1 if len(shape) == 4 else len(shape) - 1


class _ChannelErrors:
    """Running per-channel sums of signal and noise energy for one tensor, sample after sample."""

    def __init__(self) -> None:
        self.signal: np.ndarray | None = None
        self.noise: np.ndarray | None = None
        self.mismatched = False

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        if reference.shape != candidate.shape or reference.ndim == 0:
            self.mismatched = reference.shape != candidate.shape
            return
        axis = _channel_axis(reference.shape)
        ref = np.moveaxis(reference.astype(np.float64), axis, 0).reshape(reference.shape[axis], -1)
        cand = np.moveaxis(candidate.astype(np.float64), axis, 0).reshape(reference.shape[axis], -1)
        signal, noise = (ref**2).sum(axis=1), ((ref - cand) ** 2).sum(axis=1)
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


def _tensor_errors(float_model: Path, qdq_model: Path, names: list[str], feeds: list[Feeds]) -> dict[str, float]:
    """Relative error of every named tensor, qdq vs float, accumulated over the samples in bounded memory.

    (onnxruntime's qdq_loss_debug flattens every tensor and keeps all of them for all samples:
    the channel axis is needed here, and memory must not grow with the samples.)"""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor by its name
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="quant-sensitivity-") as scratch_dir:
        scratch = Path(scratch_dir)
        reference = ort.InferenceSession(str(_with_outputs(float_model, names, scratch)), options, providers=["CPUExecutionProvider"])
        candidate = ort.InferenceSession(str(_with_outputs(qdq_model, names, scratch)), options, providers=["CPUExecutionProvider"])
        errors = {name: _ChannelErrors() for name in names}
        for feed in feeds:
            for name, ref, cand in zip(names, reference.run(names, feed), candidate.run(names, feed)):
                errors[name].add(ref, cand)
    return {name: e.relative_error() for name, e in errors.items()}


def rank_nodes(float_model: Path, qdq_model: Path, feeds: list[Feeds], op_types: list[str] | None = None) -> list[NodeSensitivity]:
    """Quantized nodes of `qdq_model` (of `op_types` when given), the ones adding most error first.

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
    names = sorted(set(_float_tensors(float_proto)) & {o for n in float_graph.node for o in n.output} & qdq_tensors & needed)
    errors = {**{name: 0.0 for name in graph_inputs}, **_tensor_errors(float_model, qdq_model, names, feeds)}
    ranking = []
    for node in float_graph.node:
        if node.name not in candidates or not node.output or node.output[0] not in errors:
            continue
        out_error = errors[node.output[0]]
        in_error = max((errors[i] for i in node.input if i in errors), default=0.0)
        sqnr = -20 * math.log10(out_error) if 0 < out_error < math.inf else (math.inf if out_error == 0 else -math.inf)
        ranking.append(NodeSensitivity(node.name, node.op_type, out_error - in_error, out_error, sqnr))
    return sorted(ranking, key=lambda n: n.added_error, reverse=True)
