"""Where does PP-OCRv5 rec's static INT8 lose its text (NFKC agreement 0.43 with the avx2 preset)?

Builds the recipe's int8-static variant (no fallback search) with ONE change at a time from the recipe's
settings and reads a fixed set of tuning lines with each, beside FP32:

* `recipe`: the avx2 preset as the recipe has it (QDQ, u8 activations, 7-bit per-channel weights, MinMax, Conv+MatMul);
* `conv-only` / `matmul-only`: only one of the two op types quantized;
* `no-head`: the last MatMul (the CTC head's classifier, 18,385 logits) left in float;
* `no-attention`: the MatMuls with two activation inputs (the SVTR neck's Q·Kᵀ and attention·V) left in float;
* `percentile`: activation ranges from the 99.99th percentile instead of MinMax;
* `w8`: 8-bit weights (reduce_range off); `s8-act`: int8 (symmetric) activations;
* `float-conv-outputs`: the `recipe` model with the QuantizeLinear/DequantizeLinear pair after every Conv output
  removed (graph surgery), so only Conv inputs and weights are rounded; `percentile+float-conv-outputs` both.

Every variant's calibration is the recipe's (the same 100 calibration lines; ranges cached under --work).

    PYTHONPATH=$PWD nice -n 10 python benchmarks/rec_static_cause.py --recipe recipes/examples/ppocrv5-rec.yaml --lines 60
"""

from __future__ import annotations

import argparse
import unicodedata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization.calibrate import load_tensors_data

from quant.checks import check_inputs
from quant.data.feeds import checked_feeds
from quant.intervals import wilson
from quant.methods.base import BuildContext
from quant.methods.prepare import prepared_model
from quant.methods.static_int8 import build_static_int8
from quant.metrics.ctc import greedy_decode, to_text
from quant.recipe.loader import load_recipe


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def normalised(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def matmul_groups(prepared: Path) -> tuple[list[str], list[str]]:
    """(the last MatMul: the head, the MatMuls whose two inputs are both activations: attention)."""
    graph = onnx.load(str(prepared)).graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    attention = [n.name for n in matmuls if not any(i in constants for i in n.input)]
    return [matmuls[-1].name], attention


def without_output_qdq(source: Path, op_type: str, out: Path) -> Path:
    """The QDQ model with the Q/DQ pair on every `op_type` output bypassed: its readers get the float output."""
    model = onnx.load(str(source))
    nodes = list(model.graph.node)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    dropped: set[int] = set()
    for node in nodes:
        if node.op_type != op_type:
            continue
        for q in [r for r in readers.get(node.output[0], []) if r.op_type == "QuantizeLinear"]:
            for dq in [r for r in readers.get(q.output[0], []) if r.op_type == "DequantizeLinear"]:
                for reader in readers.get(dq.output[0], []):
                    reader.input[:] = [node.output[0] if name == dq.output[0] else name for name in reader.input]
                dropped.add(id(dq))
            dropped.add(id(q))
    kept = [n for n in nodes if id(n) not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    onnx.save(model, str(out))
    return out


def widest_outliers(minmax: Path, percentile: Path, prepared: Path, top: int = 10) -> None:
    """The calibrated tensors whose MinMax range is widest against their 99.99th-percentile range."""
    wide, clipped = load_tensors_data(minmax), load_tensors_data(percentile)
    graph = onnx.load(str(prepared)).graph
    producer = {o: f"{n.op_type} {n.name}" for n in graph.node for o in n.output}
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(f"{node.op_type} {node.name}")
    rows = []
    for name, data in wide.data.items():
        low, high = (float(np.asarray(v).ravel()[0]) for v in data.range_value)
        p_low, p_high = (float(np.asarray(v).ravel()[0]) for v in clipped.data[name].range_value)
        rows.append(((high - low) / max(p_high - p_low, 1e-12), name, low, high, p_low, p_high))
    print(f"\nTensors whose MinMax range is widest against the 99.99th percentile ({len(rows)} calibrated)")
    for ratio, name, low, high, p_low, p_high in sorted(rows, reverse=True)[:top]:
        print(
            f"{ratio:5.1f}x  {producer.get(name, 'input')} -> {', '.join(readers.get(name, []))[:40]}:"
            f" MinMax [{low:.3g}, {high:.3g}], percentile [{p_low:.3g}, {p_high:.3g}]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/examples/ppocrv5-rec.yaml")
    parser.add_argument("--lines", type=int, default=60, help="tuning lines read by every variant (the first N of the seeded order)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rec_static_cause"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", action="append", help="run only these variants (repeatable)")
    args = parser.parse_args()

    prepared = check_inputs(load_recipe(args.recipe))
    options = prepared.recipe.variants["int8-static"].model_copy(update={"fallback": None})
    model, work = prepared.model, args.work
    context = BuildContext(model.path, model.sha256, model.inputs, work / "build", work / "cache", prepared.calibration, threads=args.threads)
    source = prepared_model(context.model_path, context.model_sha256, options.prepare, context.cache_dir)
    head, attention = matmul_groups(source)
    print(f"prepared model: head MatMul {head}, {len(attention)} activation x activation MatMuls")
    changes = {
        "recipe": {},
        "conv-only": {"op_types": ["Conv"]},
        "matmul-only": {"op_types": ["MatMul"]},
        "no-head": {"exclude_nodes": head},
        "no-attention": {"exclude_nodes": attention},
        "percentile": {"calibrate": "percentile", "percentile": 99.99},
        "w8": {"reduce_range": False},
        "s8-act": {"activation_type": "int8"},
    }
    if args.only:
        changes = {name: change for name, change in changes.items() if name in args.only}
    paths = {}
    for name, change in changes.items():
        out = args.work / f"{name}.onnx"
        if not out.is_file():
            result = build_static_int8(options.model_copy(update=change), context, out)
            key = result.details["calibration"]["key"]
            (args.work / f"{name}.ranges").write_text(str(context.cache_dir / "calibration" / f"{key}.json"))
        paths[name] = out
    if (args.work / "recipe.ranges").is_file() and (args.work / "percentile.ranges").is_file():
        files = [Path((args.work / f"{name}.ranges").read_text().strip()) for name in ("recipe", "percentile")]
        widest_outliers(files[0], files[1], source)
    for base in ("recipe", "percentile"):
        if base in paths:
            name = "float-conv-outputs" if base == "recipe" else f"{base}+float-conv-outputs"
            paths[name] = without_output_qdq(paths[base], "Conv", args.work / f"{name}.onnx")

    charset = prepared.charsets["fetch_name_0"].characters
    tuning = prepared.tuning.subset(args.lines) if prepared.tuning else None
    assert tuning is not None, "the recipe needs a tuning set"
    fp32 = session(prepared.model.path, args.threads)
    runs = {name: session(path, args.threads) for name, path in paths.items()}
    agree = {name: 0 for name in runs}
    count = 0
    for _, feed in checked_feeds(tuning, prepared.model.inputs):
        count += 1
        reference = normalised(to_text(greedy_decode(fp32.run(None, feed)[0])[0], charset))
        for name, run in runs.items():
            agree[name] += normalised(to_text(greedy_decode(run.run(None, feed)[0])[0], charset)) == reference
    print(f"\nNFKC text agreement with FP32 on {count} tuning lines ({args.recipe})")
    for name, hits in agree.items():
        interval = wilson(hits, count)
        print(f"{name:14s} {hits / count:.3f} [{interval.low:.3f}, {interval.high:.3f}]  size {paths[name].stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
