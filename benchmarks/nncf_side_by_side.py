"""NNCF's ONNX post-training quantization of PP-OCRv4 rec next to quant's static INT8, measured in one run.

NNCF is NOT a dependency of quant: it runs in its own venv, called as a subprocess of this same file
(`--nncf-worker`, which imports only nncf, onnx and numpy). Set it up once:

    python3 -m venv /work/venv-nncf
    /work/venv-nncf/bin/pip install nncf 'onnxruntime==1.32.*' onnx numpy pillow   # nncf 3.4 pulls no torch

Then, from the repository root, with quant's venv:

    PYTHONPATH=$PWD nice -n 5 python benchmarks/nncf_side_by_side.py [--eval DIR]

Every model starts from the same prepared FP32 graph (edge-cpu.yaml's int8-static: opset 13 +
quant_pre_process) and the same 100 calibration lines:

* quant: the recipe's int8-static (u8 activations, s8 per-channel 7-bit weights, Conv+MatMul,
  percentile 99.99), nothing kept in float;
* nncf: `nncf.quantize` with its defaults (Q/DQ placed the OpenVINO way: on op inputs, s8 activations);
* nncf + Q after Conv: the NNCF graph with a QuantizeLinear/DequantizeLinear pair inserted on every
  Conv output that has none (MinMax range of that output on the calibration lines, the activation type
  NNCF used), so that onnxruntime can fuse DQ -> Conv -> Q into QLinearConv.

Printed side by side: fused integer ops, agreement with FP32 text (raw and NFKC, Wilson 95 %),
label-CER delta (bootstrap 95 %), latency ratio to FP32 (median and quartiles of per-round ratios,
interleaved in one run; noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# --------------------------------------------------------------------------- NNCF side (its own venv)


def nncf_worker(model_path: Path, calib_npz: Path, out_path: Path) -> None:
    import nncf

    model = onnx.load(str(model_path))
    data = np.load(calib_npz)
    items = [{"x": data[key]} for key in sorted(data.files, key=lambda k: int(k.split("_")[1]))]
    quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))
    onnx.save(quantized, str(out_path))


# --------------------------------------------------------------------------- graph surgery


def quantize_conv_outputs(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> tuple[onnx.ModelProto, int]:
    """Insert Q -> DQ on each Conv output not already quantized, in the activation type of the Conv's input DQ."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {i.name: i for i in graph.initializer}
    inserted = 0
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        new_nodes.append(node)
        if node.op_type != "Conv":
            continue
        source = producers.get(node.input[0])
        out = node.output[0]
        if source is None or source.op_type != "DequantizeLinear" or out not in ranges:
            continue  # the Conv itself runs in float: nothing to fuse
        if any(c.op_type == "QuantizeLinear" for c in consumers.get(out, [])):
            continue
        zero_point_type = initializers[source.input[2]].data_type if len(source.input) > 2 else TensorProto.UINT8
        qmin, qmax = (-128, 127) if zero_point_type == TensorProto.INT8 else (0, 255)
        low, high = min(ranges[out][0], 0.0), max(ranges[out][1], 0.0)
        scale = max(high - low, 1e-8) / (qmax - qmin)
        zero_point = int(np.clip(round(qmin - low / scale), qmin, qmax))
        scale_name, zp_name = f"{out}_convq_scale", f"{out}_convq_zero_point"
        graph.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), scale_name))
        graph.initializer.append(
            numpy_helper.from_array(
                np.array(
                    zero_point,
                    np.int8 if zero_point_type == TensorProto.INT8 else np.uint8,
                ),
                zp_name,
            )
        )
        conv_out = f"{out}_convq_float"
        node.output[0] = conv_out
        new_nodes.append(
            helper.make_node(
                "QuantizeLinear",
                [conv_out, scale_name, zp_name],
                [f"{out}_convq_q"],
                name=f"{node.name}_out_QuantizeLinear",
            )
        )
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{out}_convq_q", scale_name, zp_name],
                [out],
                name=f"{node.name}_out_DequantizeLinear",
            )
        )
        inserted += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    return model, inserted


def onnxruntime_friendly_activations(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, int]:
    """NNCF's activation quantizers made fusable by onnxruntime's CPU kernels: int8 zero points shifted to
    uint8 (+128: the same grid, and the fast u8 x s8 path) and per-channel activation scales (NNCF puts them
    on depthwise Conv inputs; QLinearConv takes one input scale) merged into one per-tensor scale covering
    every channel's range (coarser for the channels with a small range: this step costs accuracy)."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    activation_params = {(n.input[1], n.input[2]) for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    shifted = merged = 0
    for scale_name, zp_name in activation_params:
        scale = numpy_helper.to_array(initializers[scale_name]).astype(np.float64)
        zero_point = numpy_helper.to_array(initializers[zp_name]).astype(np.int32)
        if initializers[zp_name].data_type == TensorProto.INT8:  # the same grid, shifted: exact
            zero_point = zero_point + 128
            shifted += 1
        if scale.size > 1:
            low, high = float(np.min((0 - zero_point) * scale)), float(np.max((255 - zero_point) * scale))
            scale = np.array(max(high - low, 1e-8) / 255)
            zero_point = np.array(int(np.clip(round(-low / float(scale)), 0, 255)))
            merged += 1
        initializers[scale_name].CopyFrom(
            numpy_helper.from_array(scale.astype(np.float32).reshape(()) if scale.size == 1 else scale.astype(np.float32), scale_name)
        )
        initializers[zp_name].CopyFrom(
            numpy_helper.from_array(zero_point.astype(np.uint8).reshape(()) if zero_point.size == 1 else zero_point.astype(np.uint8), zp_name)
        )
    for node in graph.node:  # per-tensor now: the axis attribute of the merged Q/DQ means nothing
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] not in initializers:
            kept = [a for a in node.attribute if a.name != "axis"]
            del node.attribute[:]
            node.attribute.extend(kept)
    del graph.value_info[:]  # NNCF recorded int8 types for these tensors
    return model, shifted, merged


def minmax_ranges(model_path: Path, names: list[str], feeds: list[dict[str, np.ndarray]], threads: int) -> dict[str, tuple[float, float]]:
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    for name in names:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named tensor
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = [o.name for o in session.get_outputs() if o.name in set(names)]
    ranges = {name: (math.inf, -math.inf) for name in wanted}
    for feed in feeds:
        for name, value in zip(wanted, session.run(wanted, feed)):
            low, high = ranges[name]
            ranges[name] = (min(low, float(value.min())), max(high, float(value.max())))
    return ranges


# --------------------------------------------------------------------------- measurement


def bootstrap_delta(
    edits_variant: np.ndarray,
    edits_fp32: np.ndarray,
    lengths: np.ndarray,
    rounds: int = 2000,
) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    index = rng.integers(0, len(lengths), size=(rounds, len(lengths)))
    deltas = (edits_variant[index].sum(1) - edits_fp32[index].sum(1)) / lengths[index].sum(1)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(low), float(high)


def fused_op_counts(path: Path, threads: int) -> dict[str, int]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    target = path.with_suffix(".optimized.onnx")
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts: dict[str, int] = {}
    for node in onnx.load(str(target)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--nncf-worker",
        nargs=3,
        metavar=("MODEL", "CALIB_NPZ", "OUT"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--recipe", default="recipes/edge-cpu.yaml")
    parser.add_argument("--nncf-python", default="/work/venv-nncf/bin/python")
    parser.add_argument("--work", type=Path, default=Path("/tmp/nncf_side_by_side"))
    parser.add_argument(
        "--eval",
        type=Path,
        default=None,
        help="Line folder (images + labels.tsv) to judge on [default: the recipe's evaluation set].",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--bench-samples", type=int, default=4)
    args = parser.parse_args()
    if args.nncf_worker:
        nncf_worker(*map(Path, args.nncf_worker))
        return
    run_side_by_side(args)


def run_side_by_side(args: argparse.Namespace) -> None:
    import unicodedata

    import onnxruntime as ort

    from quant.checks import check_inputs
    from quant.data.feeds import checked_feeds
    from quant.data.sources import open_source
    from quant.intervals import wilson
    from quant.methods.base import BuildContext
    from quant.methods.prepare import prepared_model
    from quant.methods.static_int8 import build_static_int8
    from quant.metrics.ctc import edit_distance, greedy_decode, to_text
    from quant.recipe.loader import load_recipe
    from quant.recipe.schema import ImageFolderSource

    args.work.mkdir(parents=True, exist_ok=True)
    prepared = check_inputs(load_recipe(args.recipe))
    recipe = prepared.recipe
    options = recipe.variants["int8-static"].model_copy(update={"fallback": None})
    context = BuildContext(
        prepared.model.path,
        prepared.model.sha256,
        prepared.model.inputs,
        args.work / "build",
        args.work / "cache",
        calibration=prepared.calibration,
    )
    source_model = prepared_model(context.model_path, context.model_sha256, options.prepare, context.cache_dir)
    calib_feeds = [f for _, f in checked_feeds(prepared.calibration, prepared.model.inputs)]
    models: dict[str, Path] = {"fp32": prepared.model.path}

    quant_path = args.work / "quant_int8_static.onnx"
    if not quant_path.is_file():
        build_static_int8(options, context, quant_path)
    models["quant static INT8"] = quant_path

    nncf_path = args.work / "nncf_default.onnx"
    if not nncf_path.is_file():
        calib_npz = args.work / "calib.npz"
        np.savez(calib_npz, **{f"x_{i}": f["x"] for i, f in enumerate(calib_feeds)})
        started = time.perf_counter()
        subprocess.run(
            [
                args.nncf_python,
                __file__,
                "--nncf-worker",
                str(source_model),
                str(calib_npz),
                str(nncf_path),
            ],
            check=True,
        )
        print(f"nncf.quantize: {time.perf_counter() - started:.0f} s")
    models["nncf default"] = nncf_path

    convq_path = args.work / "nncf_conv_q.onnx"
    if not convq_path.is_file():
        nncf_model = onnx.load(str(nncf_path))
        conv_outputs = [n.output[0] for n in nncf_model.graph.node if n.op_type == "Conv"]
        ranges = minmax_ranges(source_model, conv_outputs, calib_feeds, args.threads)
        patched, inserted = quantize_conv_outputs(nncf_model, ranges)
        onnx.checker.check_model(patched)
        onnx.save(patched, str(convq_path))
        print(f"nncf + Q after Conv: {inserted} Q/DQ pairs inserted")
    models["nncf + Q after Conv"] = convq_path

    friendly_path = args.work / "nncf_conv_q_u8_per_tensor.onnx"
    if not friendly_path.is_file():
        friendly, shifted, merged = onnxruntime_friendly_activations(onnx.load(str(convq_path)))
        onnx.checker.check_model(friendly)
        onnx.save(friendly, str(friendly_path))
        print(f"nncf + Q after Conv, u8 per-tensor activations: {shifted} zero points shifted to uint8, {merged} per-channel scales merged")
    models["nncf + Q after Conv, u8 per-tensor act."] = friendly_path

    evaluation = prepared.evaluation
    if args.eval is not None:
        spec = recipe.evaluation.model_copy(
            update={
                "source": ImageFolderSource(images=str(args.eval.resolve()), labels="labels.tsv"),
                "samples": None,
            }
        )
        evaluation = open_source(spec, Path("/"), recipe.inputs, list(prepared.model.inputs), "evaluation")

    def session(path: Path) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.log_severity_level = 3
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def norm(text: str) -> str:
        return unicodedata.normalize("NFKC", text).replace(" ", "")

    sessions = {name: session(path) for name, path in models.items()}
    texts: dict[str, list[str]] = {name: [] for name in models}
    labels: list[str] = []
    eval_feeds = []
    for sample, feed in checked_feeds(evaluation, prepared.model.inputs):
        eval_feeds.append(feed)
        labels.append(sample.label or "")
        for name, run in sessions.items():
            texts[name].append(to_text(greedy_decode(run.run(None, feed)[0])[0], next(iter(prepared.charsets.values())).characters))

    # Latency: every round times each model on the same few lines, in a rotating order; ratios per round.
    bench = eval_feeds[: args.bench_samples]
    for run in sessions.values():
        for feed in bench:
            run.run(None, feed)
    per_round: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        times = {}
        for name in order:
            started = time.perf_counter()
            for feed in bench:
                sessions[name].run(None, feed)
            times[name] = time.perf_counter() - started
        for name in names:
            per_round[name].append(times[name] / times["fp32"])

    n = len(labels)
    fp32_edits = np.array([edit_distance(t, lab) for t, lab in zip(texts["fp32"], labels)], float)
    lengths = np.array([max(len(lab), 1) for lab in labels], float)
    print(f"\nPP-OCRv4 rec, {n} lines ({args.eval or 'the recipe evaluation set'}); FP32 label CER {fp32_edits.sum() / lengths.sum() * 100:.2f} %")
    print(f"latency: {args.rounds} interleaved rounds x {len(bench)} lines, {args.threads} threads; NOISY (shared 2-core machine)\n")
    print(
        "| model | QLinearConv / Conv / QLinearMatMul after ORT optimisation | raw agreement [95 %] | NFKC agreement [95 %]"
        " | label-CER delta [95 %] | latency ratio median [q1, q3] |"
    )
    print("|---|---|---|---|---|---|")
    for name in names:
        ops = fused_op_counts(models[name], args.threads)
        raw = sum(a == b for a, b in zip(texts[name], texts["fp32"]))
        nfkc = sum(norm(a) == norm(b) for a, b in zip(texts[name], texts["fp32"]))
        edits = np.array([edit_distance(t, lab) for t, lab in zip(texts[name], labels)], float)
        delta = (edits.sum() - fp32_edits.sum()) / lengths.sum() * 100
        low, high = bootstrap_delta(edits, fp32_edits, lengths)
        q1, median, q3 = np.percentile(per_round[name], [25, 50, 75])
        rl, rh = wilson(raw, n).low, wilson(raw, n).high
        nl, nh = wilson(nfkc, n).low, wilson(nfkc, n).high
        print(
            f"| {name} | {ops.get('QLinearConv', 0)} / {ops.get('Conv', 0) + ops.get('FusedConv', 0)} / {ops.get('QLinearMatMul', 0)} "
            f"| {raw / n:.3f} [{rl:.2f}, {rh:.2f}] | {nfkc / n:.3f} [{nl:.2f}, {nh:.2f}] "
            f"| {delta:+.2f} pt [{low * 100:+.2f}, {high * 100:+.2f}] | {median:.2f} [{q1:.2f}, {q3:.2f}] |"
        )


if __name__ == "__main__":
    sys.exit(main())
