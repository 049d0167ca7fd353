"""Why do 8-bit weights read PP-OCRv4 rec worse than 7-bit ones (reduce_range) on this machine?

Builds the default recipe's int8-static variant (edge-cpu.yaml, nothing kept in float) twice from the
SAME cached activation ranges, once with 7-bit weights (reduce_range: true) and once with 8-bit weights
(reduce_range: false), and runs each two ways:

* `sim`: the QDQ graph with every optimisation off (ORT_DISABLE_ALL): DequantizeLinear -> float Conv,
  i.e. the quantization scheme simulated in float, no integer kernel involved;
* `int`: ORT_ENABLE_ALL, where onnxruntime fuses the QDQ groups into QLinearConv/QLinearMatMul
  (the integer MLAS kernels, where 16-bit saturation would happen).

Three measurements:
1. kernel fidelity: every QuantizeLinear output (uint8) of `int` vs `sim` on a few lines; an exact
   kernel differs by at most 1 LSB (float rounding of the requantization) on a tiny fraction;
2. text vs FP32 on the evaluation lines, per (weights, path), with Wilson intervals and a paired
   exact McNemar test between 7- and 8-bit;
3. per-layer SQNR vs FP32 of every quantized Conv/MatMul output (cumulative error), in `sim`.

    PYTHONPATH=$PWD nice -n 5 python benchmarks/reduce_range_cause.py --extra-eval /tmp/rrcause/data/ocr_lines/eval
"""

from __future__ import annotations

import argparse
import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from quant.checks import check_inputs
from quant.data.feeds import checked_feeds
from quant.data.sources import SampleSource, open_source
from quant.intervals import wilson
from quant.methods.base import BuildContext
from quant.methods.prepare import prepared_model
from quant.methods.static_int8 import build_static_int8
from quant.metrics.ctc import edit_distance, greedy_decode, to_text
from quant.recipe.loader import load_recipe
from quant.recipe.schema import ImageFolderSource

LEVELS = {
    "sim": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "int": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session(model: onnx.ModelProto | Path, level: ort.GraphOptimizationLevel, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def with_outputs(path: Path, names: list[str]) -> onnx.ModelProto:
    """The model with extra graph outputs (type left to inference: onnxruntime accepts it)."""
    model = onnx.load(str(path))
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    return model


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact p-value that lines won only by A and only by B are equally likely."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass
class TextTally:
    raw: list[bool] = field(default_factory=list)
    norm: list[bool] = field(default_factory=list)
    norm_edits: int = 0
    norm_length: int = 0
    label_edits: int = 0
    label_edits_fp32: int = 0
    label_length: int = 0


def normalised(text: str) -> str:
    return unicodedata.normalize("NFKC", text).replace(" ", "")


def build_variants(recipe_path: str, work: Path) -> tuple[object, dict[str, Path]]:
    loaded = load_recipe(recipe_path)
    prepared = check_inputs(loaded)
    options = prepared.recipe.variants["int8-static"]
    context = BuildContext(
        prepared.model.path,
        prepared.model.sha256,
        prepared.model.inputs,
        work / "build",
        work / "cache",
        calibration=prepared.calibration,
    )
    paths = {}
    for bits, reduce_range in (("w7", True), ("w8", False)):
        out = work / f"rec_int8_{bits}.onnx"
        if not out.is_file():
            variant = options.model_copy(update={"reduce_range": reduce_range, "fallback": None})
            result = build_static_int8(variant, context, out)
            print(f"built {out.name}: {result.details['quantized_ops']}")
        paths[bits] = out
    # The graph the quantizer started from: same tensor names as the quantized models, for per-layer errors.
    paths["prepared"] = prepared_model(context.model_path, context.model_sha256, options.prepare, context.cache_dir)
    return prepared, paths


def extra_source(prepared: object, folder: Path) -> SampleSource:
    recipe = prepared.recipe  # type: ignore[attr-defined]
    spec = recipe.evaluation.model_copy(
        update={
            "source": ImageFolderSource(images=str(folder.resolve()), labels="labels.tsv"),
            "samples": None,
        }
    )
    return open_source(spec, Path("/"), recipe.inputs, list(prepared.model.inputs), "evaluation")  # type: ignore[attr-defined]


def isolated_group(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.ModelProto | None:
    """One quantized op alone: its input DequantizeLinears, the op, its output QuantizeLinear (uint8 in, uint8 out)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = [n for n in model.graph.node if node.output[0] in n.input]
    if len(consumers) != 1 or consumers[0].op_type != "QuantizeLinear":
        return None
    dqs = [producers[i] for i in node.input if i in producers and producers[i].op_type == "DequantizeLinear"]
    nodes = [*dqs, node, consumers[0]]
    initializers = {i.name: i for i in model.graph.initializer}
    used = {i for n in nodes for i in n.input}
    inputs = [dq.input[0] for dq in dqs if dq.input[0] not in initializers]
    graph = onnx.helper.make_graph(
        nodes,
        node.name,
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None) for name in inputs],
        [onnx.helper.make_tensor_value_info(consumers[0].output[0], onnx.TensorProto.UINT8, None)],
        [initializers[name] for name in used if name in initializers],
    )
    isolated = onnx.helper.make_model(graph, opset_imports=model.opset_import)
    isolated.ir_version = model.ir_version
    return isolated


def kernel_fidelity(paths: dict[str, Path], feeds: list[dict[str, np.ndarray]], threads: int) -> None:
    """Each fused op alone, fed the SAME uint8 inputs (captured from the float simulation), integer kernel vs float."""
    print("\n## 1. Kernel fidelity: each quantized Conv/MatMul alone, same uint8 inputs, ORT_ENABLE_ALL vs ORT_DISABLE_ALL")
    print(f"{'weights':8s} {'ops':>4s} {'elements':>12s} {'differ':>10s} {'|diff|>1':>10s} {'max |diff|':>10s}  ops after fusion (whole model)")
    for bits in ("w7", "w8"):
        model = onnx.load(str(paths[bits]))
        groups = [(n, isolated_group(model, n)) for n in model.graph.node if n.op_type in ("Conv", "MatMul")]
        groups = [(n, g) for n, g in groups if g is not None]
        wanted = sorted({i.name for _, g in groups for i in g.graph.input})
        capture = session(with_outputs(paths[bits], wanted), LEVELS["sim"], threads)
        total = differ = big = worst = 0
        sessions = [(g, session(g, LEVELS["sim"], 1), session(g, LEVELS["int"], 1)) for _, g in groups]
        for feed in feeds:
            values = dict(zip([o.name for o in capture.get_outputs()], capture.run(None, feed)))
            for g, sim, fused in sessions:
                inputs = {i.name: values[i.name] for i in g.graph.input}
                diff = np.abs(sim.run(None, inputs)[0].astype(np.int32) - fused.run(None, inputs)[0].astype(np.int32))
                total += diff.size
                differ += int((diff > 0).sum())
                big += int((diff > 1).sum())
                worst = max(worst, int(diff.max()))
        print(f"{bits:8s} {len(groups):4d} {total:12d} {differ / total:10.2e} {big / total:10.2e} {worst:10d}  {fused_ops(paths[bits], threads)}")


def fused_ops(path: Path, threads: int) -> str:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS["int"]
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    target = path.with_suffix(".optimized.onnx")
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts: dict[str, int] = {}
    for node in onnx.load(str(target)).graph.node:
        if node.op_type in (
            "QLinearConv",
            "QLinearMatMul",
            "Conv",
            "MatMul",
            "FusedConv",
            "FusedMatMul",
            "QLinearAdd",
            "MatMulIntegerToFloat",
        ):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def text_agreement(
    label: str,
    prepared: object,
    paths: dict[str, Path],
    source: SampleSource,
    threads: int,
) -> dict[str, list[bool]]:
    charset = next(iter(prepared.charsets.values())).characters  # type: ignore[attr-defined]
    fp32 = session(prepared.model.path, LEVELS["int"], threads)  # type: ignore[attr-defined]
    runs = {f"{bits}-{mode}": session(paths[bits], LEVELS[mode], threads) for bits in ("w7", "w8") for mode in ("sim", "int")}
    tallies = {name: TextTally() for name in runs}
    for sample, feed in checked_feeds(source, prepared.model.inputs):  # type: ignore[attr-defined]
        ref_seq = greedy_decode(fp32.run(None, feed)[0])[0]
        ref_text = to_text(ref_seq, charset)
        for name, run in runs.items():
            seq = greedy_decode(run.run(None, feed)[0])[0]
            text = to_text(seq, charset)
            tally = tallies[name]
            tally.raw.append(seq == ref_seq)
            tally.norm.append(normalised(text) == normalised(ref_text))
            tally.norm_edits += edit_distance(normalised(ref_text), normalised(text))
            tally.norm_length += max(len(normalised(ref_text)), 1)
            if sample.label is not None:
                tally.label_edits += edit_distance(text, sample.label)
                tally.label_edits_fp32 += edit_distance(ref_text, sample.label)
                tally.label_length += max(len(sample.label), 1)
    n = len(next(iter(tallies.values())).raw)
    print(f"\n## 2. Text vs FP32 on {label} ({n} lines)")
    print(f"{'variant':8s} {'raw agreement [95% CI]':>26s} {'NFKC agreement [95% CI]':>26s} {'CER vs FP32 (NFKC)':>19s} {'label CER delta':>16s}")
    for name, t in tallies.items():
        raw, norm = sum(t.raw), sum(t.norm)
        lo, hi = wilson(raw, n).low, wilson(raw, n).high
        nlo, nhi = wilson(norm, n).low, wilson(norm, n).high
        delta = (t.label_edits - t.label_edits_fp32) / t.label_length * 100 if t.label_length else math.nan
        print(
            f"{name:8s} {raw / n:8.3f} [{lo:.3f}, {hi:.3f}]      {norm / n:8.3f} [{nlo:.3f}, {nhi:.3f}]"
            f"      {t.norm_edits / t.norm_length * 100:12.2f} %  {delta:+10.2f} pt"
        )
    for mode in ("sim", "int"):
        for metric in ("raw", "norm"):
            a, b = (
                getattr(tallies[f"w7-{mode}"], metric),
                getattr(tallies[f"w8-{mode}"], metric),
            )
            only7 = sum(x and not y for x, y in zip(a, b))
            only8 = sum(y and not x for x, y in zip(a, b))
            print(
                f"paired {mode} {metric:4s}: lines only 7-bit agrees {only7}, only 8-bit agrees {only8},"
                f" exact McNemar p = {mcnemar_exact(only7, only8):.3g}"
            )
    for bits in ("w7", "w8"):
        a, b = tallies[f"{bits}-sim"].raw, tallies[f"{bits}-int"].raw
        print(f"{bits}: lines where sim and int disagree on agreement: {sum(x != y for x, y in zip(a, b))}")
    return {name: t.raw for name, t in tallies.items()}


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - candidate) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return 10 * math.log10(signal / noise) if noise > 0 else math.inf


def per_layer(paths: dict[str, Path], feeds: list[dict[str, np.ndarray]], threads: int, show: int) -> None:
    graph = onnx.load(str(paths["w7"])).graph
    layers = [
        (n.name, n.op_type, n.output[0])
        for n in graph.node
        if n.op_type in ("Conv", "MatMul") and any(i.endswith("DequantizeLinear_Output") or "_DequantizeLinear" in i for i in n.input)
    ]
    names = [out for _, _, out in layers]
    fp32 = session(with_outputs(paths["prepared"], names), LEVELS["sim"], threads)
    sims = {bits: session(with_outputs(paths[bits], names), LEVELS["sim"], threads) for bits in ("w7", "w8")}
    sums = {bits: np.zeros(len(names)) for bits in sims}
    for feed in feeds:
        ref = dict(zip([o.name for o in fp32.get_outputs()], fp32.run(None, feed)))
        for bits, run in sims.items():
            out = dict(zip([o.name for o in run.get_outputs()], run.run(None, feed)))
            sums[bits] += [sqnr_db(ref[name], out[name]) for name in names]
    means = {bits: s / len(feeds) for bits, s in sums.items()}
    gain = means["w8"] - means["w7"]
    print(f"\n## 3. Per-layer SQNR vs FP32 in float simulation (cumulative error), mean over {len(feeds)} lines")
    print(
        f"8-bit better than 7-bit on {int((gain > 0).sum())} of {len(names)} layers;"
        f" median gain {np.median(gain):+.2f} dB; final layer {gain[-1]:+.2f} dB"
    )
    order = np.argsort(gain)
    print(f"{'layer':40s} {'op':7s} {'7-bit dB':>9s} {'8-bit dB':>9s} {'8-7':>7s}")
    for i in list(order[:show]) + list(range(len(names) - 3, len(names))):
        print(f"{layers[i][0][:40]:40s} {layers[i][1]:7s} {means['w7'][i]:9.2f} {means['w8'][i]:9.2f} {gain[i]:+7.2f}")


def weight_initializers(model: onnx.ModelProto, node: onnx.NodeProto) -> set[str]:
    """Names of the quantized weight and bias initializers (values, scales, zero points) of one node."""
    producers = {o: n for n in model.graph.node for o in n.output}
    initializers = {i.name for i in model.graph.initializer}
    names: set[str] = set()
    for name in node.input[1:]:
        dq = producers.get(name)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in initializers:
            names |= {i for i in dq.input if i in initializers}
    return names


def hybrid(base: onnx.ModelProto, donor: onnx.ModelProto, node_names: set[str]) -> onnx.ModelProto:
    """`base` with the weights (and int32 biases) of `node_names` taken from `donor`: same graph, same activations."""
    model = onnx.ModelProto()
    model.CopyFrom(base)
    swap = set().union(*(weight_initializers(base, n) for n in base.graph.node if n.name in node_names))
    donated = {i.name: i for i in donor.graph.initializer}
    for initializer in model.graph.initializer:
        if initializer.name in swap:
            initializer.CopyFrom(donated[initializer.name])
    return model


def requantized_weights(path: Path, fp32_path: Path, qmax: int, jitter: float, seed: int) -> onnx.ModelProto:
    """The same QDQ model with every weight re-rounded on scale * (1 + U(0, jitter)) per channel: another rounding
    draw of the same bit width (the int32 bias follows its new scale). jitter 0 reproduces onnxruntime's weights."""
    model = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    float_weights = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(fp32_path)).graph.initializer}
    initializers = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def value(name: str) -> np.ndarray:
        return onnx.numpy_helper.to_array(initializers[name])

    def put(name: str, array: np.ndarray) -> None:
        initializers[name].CopyFrom(onnx.numpy_helper.from_array(array, name))

    for node in model.graph.node:
        weight_dq = producers.get(node.input[1]) if node.op_type in ("Conv", "MatMul") else None
        if weight_dq is None or weight_dq.op_type != "DequantizeLinear" or weight_dq.input[0] not in initializers:
            continue
        weight = float_weights[weight_dq.input[0].removesuffix("_quantized")]
        axis = next((a.i for a in weight_dq.attribute if a.name == "axis"), 1)
        scale = value(weight_dq.input[1]).astype(np.float64) * (1 + rng.uniform(0, jitter, size=value(weight_dq.input[1]).shape))
        shape = [1] * weight.ndim
        shape[axis] = -1
        put(weight_dq.input[0], np.clip(np.rint(weight / scale.reshape(shape)), -qmax, qmax).astype(np.int8))
        put(weight_dq.input[1], scale.astype(np.float32))
        bias_dq = producers.get(node.input[2]) if len(node.input) > 2 else None
        if bias_dq is not None and bias_dq.op_type == "DequantizeLinear":
            bias = value(bias_dq.input[0]).astype(np.float64) * value(bias_dq.input[1]).astype(np.float64)
            bias_scale = float(value(producers[node.input[0]].input[1])) * scale
            put(bias_dq.input[0], np.rint(bias / bias_scale).astype(np.int32))
            put(bias_dq.input[1], bias_scale.astype(np.float32))
    return model


def space_tally(
    label: str,
    model: onnx.ModelProto | Path,
    prepared: object,
    feeds: list[dict[str, np.ndarray]],
    reference: list[tuple[int, ...]],
    threads: int,
    level: str = "int",
) -> None:
    run = session(model, LEVELS[level], threads)
    charset = next(iter(prepared.charsets.values())).characters  # type: ignore[attr-defined]
    agree = added = dropped = 0
    for feed, ref in zip(feeds, reference):
        seq = greedy_decode(run.run(None, feed)[0])[0]
        agree += seq == ref
        spaces = to_text(seq, charset).count(" ") - to_text(ref, charset).count(" ")
        added += max(spaces, 0)
        dropped += max(-spaces, 0)
    print(f"{label:44s} raw agreement {agree / len(feeds):.3f}   spaces added {added:4d}  dropped {dropped:4d}", flush=True)


def localise(prepared: object, paths: dict[str, Path], feeds: list[dict[str, np.ndarray]], threads: int, draws: int) -> None:
    fp32 = session(prepared.model.path, LEVELS["int"], threads)  # type: ignore[attr-defined]
    reference = [greedy_decode(fp32.run(None, f)[0])[0] for f in feeds]
    w7, w8 = onnx.load(str(paths["w7"])), onnx.load(str(paths["w8"]))
    weighted = [n.name for n in w7.graph.node if n.op_type in ("Conv", "MatMul") and weight_initializers(w7, n)]
    head = {weighted[-1]}
    # PP-OCRv4 rec: PP-LCNetV3 backbone Conv.0-32, SVTR neck Conv.33-37 + its MatMuls, CTC head = last MatMul.
    neck = {n for n in weighted if n.startswith("p2o.MatMul") or int(n.rsplit(".", 1)[1]) >= 33} - head
    backbone = set(weighted) - neck - head
    print(f"\n## 4. Where: swap weight groups between the two models ({len(feeds)} lines, integer kernels)")
    print(f"groups: backbone {len(backbone)} Conv, neck {len(neck)} (SVTR MatMul + its Conv), head {sorted(head)}")
    space_tally("7-bit everywhere", w7, prepared, feeds, reference, threads)
    space_tally("8-bit everywhere", w8, prepared, feeds, reference, threads)
    for group, names in (("backbone", backbone), ("neck", neck), ("head", head)):
        space_tally(f"7-bit, {group} 8-bit", hybrid(w7, w8, names), prepared, feeds, reference, threads)
        space_tally(f"8-bit, {group} 7-bit", hybrid(w8, w7, names), prepared, feeds, reference, threads)
    print("\n## 5. Is it the bit width or this particular rounding? Other rounding draws of each width")
    space_tally(
        "8-bit re-rounded, no jitter (= onnxruntime)",
        requantized_weights(paths["w8"], paths["prepared"], 127, 0.0, 0),
        prepared,
        feeds,
        reference,
        threads,
    )
    for seed in range(1, draws + 1):
        for bits, qmax in (("w7", 64), ("w8", 127)):
            model = requantized_weights(paths[bits], paths["prepared"], qmax, 0.03, seed)
            space_tally(f"{bits[1]}-bit, scales x U(1, 1.03), draw {seed}", model, prepared, feeds, reference, threads)


def float_weight_of(name: str) -> str:
    return name.removesuffix("_quantized")


def dequantized(model: onnx.ModelProto, dq: onnx.NodeProto) -> np.ndarray:
    values = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name in dq.input}
    q = values[dq.input[0]].astype(np.float64)
    scale = values[dq.input[1]].astype(np.float64)
    zero = values[dq.input[2]].astype(np.float64) if len(dq.input) > 2 else np.zeros_like(scale)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = -1
    return ((q - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)


def weights_only(qdq_path: Path, fp32_path: Path) -> onnx.ModelProto:
    """The FP32 graph with each Conv/MatMul weight replaced by its quantize-dequantized value: no activation rounding."""
    qdq = onnx.load(str(qdq_path))
    producers = {o: n for n in qdq.graph.node for o in n.output}
    replaced = {}
    for node in qdq.graph.node:
        dq = producers.get(node.input[1]) if node.op_type in ("Conv", "MatMul") else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0].endswith("_quantized"):
            replaced[float_weight_of(dq.input[0])] = dequantized(qdq, dq)
    model = onnx.load(str(fp32_path))
    for initializer in model.graph.initializer:
        if initializer.name in replaced:
            initializer.CopyFrom(onnx.numpy_helper.from_array(replaced[initializer.name], initializer.name))
    return model


def activations_only(qdq_path: Path, fp32_path: Path) -> onnx.ModelProto:
    """The QDQ graph with float weights and biases: only the activations are rounded."""
    model = onnx.load(str(qdq_path))
    float_values = {i.name: i for i in onnx.load(str(fp32_path)).graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    dropped = set()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul"):
            continue
        for index in range(1, len(node.input)):
            dq = producers.get(node.input[index])
            if dq is not None and dq.op_type == "DequantizeLinear" and float_weight_of(dq.input[0]) in float_values:
                name = float_weight_of(dq.input[0])
                model.graph.initializer.append(float_values[name])
                node.input[index] = name
                dropped.add(id(dq))
    kept = [n for n in model.graph.node if id(n) not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def decompose(prepared: object, paths: dict[str, Path], feeds: list[dict[str, np.ndarray]], threads: int) -> None:
    fp32 = session(prepared.model.path, LEVELS["int"], threads)  # type: ignore[attr-defined]
    reference = [greedy_decode(fp32.run(None, f)[0])[0] for f in feeds]
    print(f"\n## 6. Which rounding adds the spaces: weights alone, activations alone ({len(feeds)} lines)")
    space_tally("FP32 prepared graph (BN folded)", paths["prepared"], prepared, feeds, reference, threads)
    # Float simulation: at ORT_ENABLE_ALL onnxruntime's WeightBiasQuantization would quantize these float weights
    # (per-tensor) itself, to fuse DQ -> Conv -> Q.
    activations = activations_only(paths["w8"], paths["prepared"])
    space_tally("activations only (float weights, sim)", activations, prepared, feeds, reference, threads, level="sim")
    for bits in ("w7", "w8"):
        space_tally(
            f"{bits[1]}-bit weights only (float activations)", weights_only(paths[bits], paths["prepared"]), prepared, feeds, reference, threads
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/edge-cpu.yaml")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rrcause/work"))
    parser.add_argument(
        "--extra-eval",
        type=Path,
        action="append",
        default=[],
        help="More line folders (images + labels.tsv) to measure on.",
    )
    parser.add_argument("--only-extra", action="store_true", help="Section 2 on the --extra-eval folders only.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layer-lines", type=int, default=24)
    parser.add_argument("--draws", type=int, default=3, help="Rounding draws per bit width in section 5.")
    parser.add_argument("--lines", type=int, default=None, help="Sections 4-6 on the first N evaluation lines only.")
    parser.add_argument("--skip", nargs="*", default=[], choices=["fidelity", "text", "layers", "where", "decompose"])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    prepared, paths = build_variants(args.recipe, args.work)
    feeds = [
        f
        for _, f in zip(
            range(args.layer_lines),
            (f for _, f in checked_feeds(prepared.evaluation, prepared.model.inputs)),
        )
    ]
    if "fidelity" not in args.skip:
        kernel_fidelity(paths, feeds[:8], args.threads)
    if "text" not in args.skip:
        sources: Iterable[tuple[str, SampleSource]] = [] if args.only_extra else [("the recipe's evaluation lines", prepared.evaluation)]
        sources = [
            *sources,
            *((str(folder), extra_source(prepared, folder)) for folder in args.extra_eval),
        ]
        for label, source in sources:
            text_agreement(label, prepared, paths, source, args.threads)
    if "layers" not in args.skip:
        per_layer(paths, feeds, args.threads, show=8)
    if "where" not in args.skip:
        all_feeds = [f for _, f in zip(range(args.lines or 10**9), (f for _, f in checked_feeds(prepared.evaluation, prepared.model.inputs)))]
        localise(prepared, paths, all_feeds, args.threads, args.draws)
    if "decompose" not in args.skip:
        all_feeds = [f for _, f in zip(range(args.lines or 10**9), (f for _, f in checked_feeds(prepared.evaluation, prepared.model.inputs)))]
        decompose(prepared, paths, all_feeds, args.threads)


if __name__ == "__main__":
    main()
