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

from quant.calibration.reader import checked_feeds
from quant.calibration.sources import SampleSource, open_source
from quant.methods.base import BuildContext
from quant.methods.prepare import prepared_model
from quant.methods.static_int8 import quantize_with_exclusions
from quant.metrics.ctc import edit_distance, greedy_decode, to_text
from quant.recipe.loader import load_recipe
from quant.recipe.schema import ImageFolderSource
from quant.runner import RunOptions, prepare

LEVELS = {
    "sim": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "int": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session(
    model: onnx.ModelProto | Path, level: ort.GraphOptimizationLevel, threads: int
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = (
        model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    )
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def with_outputs(path: Path, names: list[str]) -> onnx.ModelProto:
    """The model with extra graph outputs (type left to inference: onnxruntime accepts it)."""
    model = onnx.load(str(path))
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    return model


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    if total == 0:
        return math.nan, math.nan
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = (
        z
        * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
        / (1 + z * z / total)
    )
    return centre - half, centre + half


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
    prepared = prepare(loaded, RunOptions(out_dir=work, cache_dir=work / "cache"))
    options = prepared.recipe.variants["int8-static"]
    context = BuildContext(
        prepared.model.path,
        prepared.model.sha256,
        prepared.model.inputs,
        work / "build",
        work / "cache",
        prepared.calibration,
        prepared.evaluation,
    )
    paths = {}
    for bits, reduce_range in (("w7", True), ("w8", False)):
        out = work / f"rec_int8_{bits}.onnx"
        if not out.is_file():
            variant = options.model_copy(
                update={"reduce_range": reduce_range, "fallback": None}
            )
            result = quantize_with_exclusions(variant, context, out, [])
            print(f"built {out.name}: {result.details['quantized_ops']}")
        paths[bits] = out
    # The graph the quantizer started from: same tensor names as the quantized models, for per-layer errors.
    paths["prepared"] = prepared_model(
        context.model_path, context.model_sha256, options.prepare, context.cache_dir
    )
    return prepared, paths


def extra_source(prepared: object, folder: Path) -> SampleSource:
    recipe = prepared.recipe  # type: ignore[attr-defined]
    spec = recipe.evaluation.model_copy(
        update={
            "source": ImageFolderSource(images=str(folder), labels="labels.tsv"),
            "samples": None,
        }
    )
    return open_source(
        spec, Path("/"), recipe.inputs, list(prepared.model.inputs), "evaluation"
    )  # type: ignore[attr-defined]


def isolated_group(
    model: onnx.ModelProto, node: onnx.NodeProto
) -> onnx.ModelProto | None:
    """One quantized op alone: its input DequantizeLinears, the op, its output QuantizeLinear (uint8 in, uint8 out)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = [n for n in model.graph.node if node.output[0] in n.input]
    if len(consumers) != 1 or consumers[0].op_type != "QuantizeLinear":
        return None
    dqs = [
        producers[i]
        for i in node.input
        if i in producers and producers[i].op_type == "DequantizeLinear"
    ]
    nodes = [*dqs, node, consumers[0]]
    initializers = {i.name: i for i in model.graph.initializer}
    used = {i for n in nodes for i in n.input}
    inputs = [dq.input[0] for dq in dqs if dq.input[0] not in initializers]
    graph = onnx.helper.make_graph(
        nodes,
        node.name,
        [
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None)
            for name in inputs
        ],
        [
            onnx.helper.make_tensor_value_info(
                consumers[0].output[0], onnx.TensorProto.UINT8, None
            )
        ],
        [initializers[name] for name in used if name in initializers],
    )
    isolated = onnx.helper.make_model(graph, opset_imports=model.opset_import)
    isolated.ir_version = model.ir_version
    return isolated


def kernel_fidelity(
    paths: dict[str, Path], feeds: list[dict[str, np.ndarray]], threads: int
) -> None:
    """Each fused op alone, fed the SAME uint8 inputs (captured from the float simulation), integer kernel vs float."""
    print(
        "\n## 1. Kernel fidelity: each quantized Conv/MatMul alone, same uint8 inputs, ORT_ENABLE_ALL vs ORT_DISABLE_ALL"
    )
    print(
        f"{'weights':8s} {'ops':>4s} {'elements':>12s} {'differ':>10s} {'|diff|>1':>10s} {'max |diff|':>10s}  ops after fusion (whole model)"
    )
    for bits in ("w7", "w8"):
        model = onnx.load(str(paths[bits]))
        groups = [
            (n, isolated_group(model, n))
            for n in model.graph.node
            if n.op_type in ("Conv", "MatMul")
        ]
        groups = [(n, g) for n, g in groups if g is not None]
        wanted = sorted({i.name for _, g in groups for i in g.graph.input})
        capture = session(with_outputs(paths[bits], wanted), LEVELS["sim"], threads)
        total = differ = big = worst = 0
        sessions = [
            (g, session(g, LEVELS["sim"], 1), session(g, LEVELS["int"], 1))
            for _, g in groups
        ]
        for feed in feeds:
            values = dict(
                zip([o.name for o in capture.get_outputs()], capture.run(None, feed))
            )
            for g, sim, fused in sessions:
                inputs = {i.name: values[i.name] for i in g.graph.input}
                diff = np.abs(
                    sim.run(None, inputs)[0].astype(np.int32)
                    - fused.run(None, inputs)[0].astype(np.int32)
                )
                total += diff.size
                differ += int((diff > 0).sum())
                big += int((diff > 1).sum())
                worst = max(worst, int(diff.max()))
        print(
            f"{bits:8s} {len(groups):4d} {total:12d} {differ / total:10.2e} {big / total:10.2e} {worst:10d}  {fused_ops(paths[bits], threads)}"
        )


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
    charset = prepared.charset  # type: ignore[attr-defined]
    fp32 = session(prepared.model.path, LEVELS["int"], threads)  # type: ignore[attr-defined]
    runs = {
        f"{bits}-{mode}": session(paths[bits], LEVELS[mode], threads)
        for bits in ("w7", "w8")
        for mode in ("sim", "int")
    }
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
    print(
        f"{'variant':8s} {'raw agreement [95% CI]':>26s} {'NFKC agreement [95% CI]':>26s} {'CER vs FP32 (NFKC)':>19s} {'label CER delta':>16s}"
    )
    for name, t in tallies.items():
        raw, norm = sum(t.raw), sum(t.norm)
        lo, hi = wilson(raw, n)
        nlo, nhi = wilson(norm, n)
        delta = (
            (t.label_edits - t.label_edits_fp32) / t.label_length * 100
            if t.label_length
            else math.nan
        )
        print(
            f"{name:8s} {raw / n:8.3f} [{lo:.3f}, {hi:.3f}]      {norm / n:8.3f} [{nlo:.3f}, {nhi:.3f}]      {t.norm_edits / t.norm_length * 100:12.2f} %  {delta:+10.2f} pt"
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
                f"paired {mode} {metric:4s}: lines only 7-bit agrees {only7}, only 8-bit agrees {only8}, exact McNemar p = {mcnemar_exact(only7, only8):.3g}"
            )
    for bits in ("w7", "w8"):
        a, b = tallies[f"{bits}-sim"].raw, tallies[f"{bits}-int"].raw
        print(
            f"{bits}: lines where sim and int disagree on agreement: {sum(x != y for x, y in zip(a, b))}"
        )
    return {name: t.raw for name, t in tallies.items()}


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - candidate) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return 10 * math.log10(signal / noise) if noise > 0 else math.inf


def per_layer(
    paths: dict[str, Path], feeds: list[dict[str, np.ndarray]], threads: int, show: int
) -> None:
    graph = onnx.load(str(paths["w7"])).graph
    layers = [
        (n.name, n.op_type, n.output[0])
        for n in graph.node
        if n.op_type in ("Conv", "MatMul")
        and any(
            i.endswith("DequantizeLinear_Output") or "_DequantizeLinear" in i
            for i in n.input
        )
    ]
    names = [out for _, _, out in layers]
    fp32 = session(with_outputs(paths["prepared"], names), LEVELS["sim"], threads)
    sims = {
        bits: session(with_outputs(paths[bits], names), LEVELS["sim"], threads)
        for bits in ("w7", "w8")
    }
    sums = {bits: np.zeros(len(names)) for bits in sims}
    for feed in feeds:
        ref = dict(zip([o.name for o in fp32.get_outputs()], fp32.run(None, feed)))
        for bits, run in sims.items():
            out = dict(zip([o.name for o in run.get_outputs()], run.run(None, feed)))
            sums[bits] += [sqnr_db(ref[name], out[name]) for name in names]
    means = {bits: s / len(feeds) for bits, s in sums.items()}
    gain = means["w8"] - means["w7"]
    print(
        f"\n## 3. Per-layer SQNR vs FP32 in float simulation (cumulative error), mean over {len(feeds)} lines"
    )
    print(
        f"8-bit better than 7-bit on {int((gain > 0).sum())} of {len(names)} layers; median gain {np.median(gain):+.2f} dB; final layer {gain[-1]:+.2f} dB"
    )
    order = np.argsort(gain)
    print(f"{'layer':40s} {'op':7s} {'7-bit dB':>9s} {'8-bit dB':>9s} {'8-7':>7s}")
    for i in list(order[:show]) + list(range(len(names) - 3, len(names))):
        print(
            f"{layers[i][0][:40]:40s} {layers[i][1]:7s} {means['w7'][i]:9.2f} {means['w8'][i]:9.2f} {gain[i]:+7.2f}"
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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layer-lines", type=int, default=24)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["fidelity", "text", "layers"]
    )
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
        sources: Iterable[tuple[str, SampleSource]] = [
            ("the recipe's evaluation lines", prepared.evaluation)
        ]
        sources = [
            *sources,
            *(
                (str(folder), extra_source(prepared, folder))
                for folder in args.extra_eval
            ),
        ]
        for label, source in sources:
            text_agreement(label, prepared, paths, source, args.threads)
    if "layers" not in args.skip:
        per_layer(paths, feeds, args.threads, show=8)


if __name__ == "__main__":
    main()
