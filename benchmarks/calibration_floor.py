"""Calibration time over its floor (plain FP32 inference of the same samples), per method, interleaved.

    python benchmarks/calibration_floor.py                               # edge-cpu.yaml's static variant, 3 rounds
    python benchmarks/calibration_floor.py --samples 40 --rounds 5 --methods minmax,percentile
    python benchmarks/calibration_floor.py --profile percentile          # + cProfile's top lines of one run

The model is the recipe's static_int8 variant's prepared model, the samples its calibration samples
(as `quantize` feeds them), the tensors those it calibrates. Each round runs, in turn:

* floor: FP32 inference, onnxruntime's default (all optimisations): what the issue's ratio divides by;
* floor-unopt: the same with optimisations off, as every calibration session runs (onnxruntime's own
  calibrators too: optimisations would fuse observed tensors away or change their last bits);
* each method through `collect_ranges`, and for histogram methods also with the binnings `--compare`
  names (default `legacy`: np.histogram, one tensor after the other, as before
  `quant/calibration/fixed_histogram.py` and the parallel binning; `serial`: the new binning on one
  thread), whose ranges must be identical.

Ratios are medians over the rounds of (method time / floor time of the same round), so a load
change between rounds hits both. The machine is shared: quote ratios, not seconds.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def legacy_add(self: Any, values: np.ndarray) -> None:
    """`_Histogram.add` as it was: np.histogram on every batch."""
    flat = values.reshape(-1)
    counts, edges = np.histogram(np.abs(flat) if self.absolute else flat, self.bins, range=self.value_range)
    if self.counts is None:
        self.counts, self.edges = counts, edges
    else:
        self.counts += counts


def load_case(recipe: Path, samples: int | None, cache: Path) -> tuple[Path, list[dict[str, np.ndarray]], Any]:
    from quant.calibration.ranges import SourceFeeds
    from quant.checks import check_inputs
    from quant.methods.prepare import prepared_model
    from quant.model import file_sha256
    from quant.recipe.loader import load_recipe

    loaded = load_recipe(str(recipe))
    inputs = check_inputs(loaded, (), None, True)
    variant = next(v for v in loaded.recipe.variants.values() if v.method == "static_int8")
    model = prepared_model(inputs.model.path, file_sha256(inputs.model.path), variant.prepare, cache)
    feeds = list(SourceFeeds(inputs.calibration.subset(variant.calibration_samples), inputs.model.inputs))
    return model, feeds[:samples] if samples else feeds, variant


def inference(model: Path, optimised: bool, threads: int | None = None) -> Callable[[list[dict[str, np.ndarray]]], None]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not optimised:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    def run(feeds: list[dict[str, np.ndarray]]) -> None:
        for feed in feeds:
            session.run(None, feed)

    return run


BINNINGS = {
    "": "as it is: FixedRangeHistogram, the tensors of a run binned in parallel",
    "serial": "FixedRangeHistogram, one tensor after the other",
    "legacy": "np.histogram, one tensor after the other (before; the old path)",
}


def calibration(
    model: Path, method: str, variant: Any, binning: str = "", threads: int | None = None
) -> Callable[[list[dict[str, np.ndarray]]], dict]:
    from quant.calibration import streaming
    from quant.calibration.streaming import collect_ranges, quantize_static_default_op_types, ranges_to_json

    def run(feeds: list[dict[str, np.ndarray]]) -> dict:
        add, binning_threads = streaming._Histogram.add, streaming._binning_threads
        if binning in ("serial", "legacy"):
            streaming._binning_threads = lambda _: 1
        if binning == "legacy":
            streaming._Histogram.add = legacy_add  # type: ignore[method-assign]
        try:
            with tempfile.TemporaryDirectory(prefix="quant-calib-floor-") as work:
                ranges = collect_ranges(
                    model, feeds, method, percentile=variant.percentile, work_dir=Path(work), threads=threads,
                    op_types_to_calibrate=variant.op_types or quantize_static_default_op_types(),
                )  # fmt: skip
        finally:
            streaming._Histogram.add, streaming._binning_threads = add, binning_threads  # type: ignore[method-assign]
        return ranges_to_json(ranges)

    return run


def profile(run: Callable[[list[dict[str, np.ndarray]]], Any], feeds: list[dict[str, np.ndarray]], lines: int = 14) -> str:
    profiler = cProfile.Profile(time.process_time)  # CPU seconds: steadier than wall time on a shared machine
    profiler.enable()
    run(feeds)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def explain_minmax(model: Path, feeds: list[dict[str, np.ndarray]], variant: Any) -> None:
    """Where MinMax's time goes: the range model (ORT's probes) at each optimisation level, its ranges' bits, kernel times."""
    import onnxruntime as ort

    from quant.calibration import streaming

    with tempfile.TemporaryDirectory(prefix="quant-calib-floor-") as work:
        settings = streaming._resolve_settings("minmax", None, None, 128, variant.percentile, "same", 2**28)
        op_types = variant.op_types or streaming.quantize_static_default_op_types()
        observed = streaming._prepare_models(model, op_types, settings, Path(work))
        levels = {
            "disabled (as ORT's calibrators)": "ORT_DISABLE_ALL",
            "basic": "ORT_ENABLE_BASIC",
            "extended": "ORT_ENABLE_EXTENDED",
            "all": "ORT_ENABLE_ALL",
        }
        outputs: dict[str, list] = {}
        print(f"\nMinMax's range model ({len(observed.tensors)} tensors, ReduceMin+ReduceMax each) by optimisation level, x the optimised floor:")
        floor = inference(model, True)
        for label, level in levels.items():
            options = ort.SessionOptions()
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
            options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
            options.enable_mem_pattern = False
            session = ort.InferenceSession(str(observed.range_model_path), options, providers=["CPUExecutionProvider"])
            started = time.perf_counter()
            floor(feeds)
            floor_seconds = time.perf_counter() - started
            started = time.perf_counter()
            outputs[label] = [session.run(None, feed) for feed in feeds]
            ratio = (time.perf_counter() - started) / floor_seconds
            same = all(
                all(np.array_equal(a, b, equal_nan=True) for a, b in zip(mine, theirs, strict=True))
                for mine, theirs in zip(outputs[label], next(iter(outputs.values())), strict=True)
            )
            print(f"  {label:34} {ratio:5.2f}x   min/max bit-identical to disabled: {same}")
        print("\nKernel time by op type (onnxruntime profiling), ms:")
        for label, path, optimised in [("floor", model, True), ("floor-unopt", model, False), ("range model", observed.range_model_path, False)]:
            options = ort.SessionOptions()
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(work) / label.replace(" ", "-"))
            if not optimised:
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            if label == "range model":
                options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
                options.enable_mem_pattern = False
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for feed in feeds:
                session.run(None, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
            kernels: dict[str, float] = defaultdict(float)
            for event in events:
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    kernels[event["args"]["op_name"]] += event["dur"] / 1000
            top = sorted(kernels.items(), key=lambda item: -item[1])[:7]
            print(f"  {label:12} total {sum(kernels.values()):7.0f}: " + ", ".join(f"{op} {ms:.0f}" for op, ms in top))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "edge-cpu.yaml")
    parser.add_argument("--samples", type=int, default=None, help="the first N calibration samples (default: all the variant uses)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="minmax,percentile,entropy")
    parser.add_argument(
        "--compare", default="legacy", help="histogram methods: also run with these binnings, comma-separated: "
        + "; ".join(f"{k}: {v}" for k, v in BINNINGS.items() if k) + " ('' for none)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads, floor and calibration alike (default: its own)")
    parser.add_argument("--explain-minmax", action="store_true", help="also: the range model at each optimisation level, kernel times")
    parser.add_argument("--profile", default=None, help="also print cProfile's top lines of one run of this method")
    args = parser.parse_args()
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="quant-calib-floor-cache-") as cache:
        model, feeds, variant = load_case(args.recipe, args.samples, Path(cache))
        methods = [m for m in args.methods.split(",") if m]
        runs: dict[str, Callable[[list[dict[str, np.ndarray]]], Any]] = {
            "floor": inference(model, True, args.threads), "floor-unopt": inference(model, False, args.threads)
        }  # fmt: skip
        compared = [b for b in args.compare.split(",") if b]
        unknown = set(compared) - set(BINNINGS)
        if unknown:
            parser.error(f"--compare: unknown {sorted(unknown)}; choose from {sorted(k for k in BINNINGS if k)}")
        for method in methods:
            runs[method] = calibration(model, method, variant, threads=args.threads)
            for binning in compared if method != "minmax" else []:
                runs[f"{method} ({binning})"] = calibration(model, method, variant, binning, args.threads)
        print(f"{args.recipe.name}: {len(feeds)} samples, model {model.name}, onnxruntime {ort.__version__}, "
              f"{os.cpu_count()} CPUs, 1-minute load {os.getloadavg()[0]:.1f} at the start")  # fmt: skip
        runs["floor"](feeds[:1])  # warm-up (the calibrations make new sessions each run, as in a build)
        runs["floor-unopt"](feeds[:1])
        seconds: dict[str, list[float]] = defaultdict(list)
        ratios: dict[str, list[float]] = defaultdict(list)
        cpu_seconds: dict[str, list[float]] = defaultdict(list)
        results: dict[str, Any] = {}
        for round_ in range(args.rounds):
            for name, run in runs.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                result = run(feeds)
                seconds[name].append(time.perf_counter() - started)
                cpu_seconds[name].append(time.process_time() - cpu_started)
                if result is not None:
                    results[name] = result
            for name in runs:
                ratios[name].append(seconds[name][round_] / seconds["floor"][round_])
        # CPU seconds (all the process's threads) are steadier under load than wall time, but count onnxruntime's spinning.
        cpu_floor = statistics.median(cpu_seconds["floor"])
        print(f"\n{'':34} {'median s':>9} {'x floor (median of rounds)':>27} {'CPU s':>7} {'x floor CPU':>11}   each round (wall)")
        for name in runs:
            each = " ".join(f"{r:.2f}" for r in ratios[name])
            cpu = statistics.median(cpu_seconds[name])
            wall = f"{statistics.median(seconds[name]):9.1f} {statistics.median(ratios[name]):27.2f}"
            print(f"{name:34} {wall} {cpu:7.1f} {cpu / cpu_floor:11.2f}   {each}")
        for method in methods:
            for binning in compared if method != "minmax" else []:
                same = json.dumps(results[f"{method} ({binning})"], sort_keys=True) == json.dumps(results[method], sort_keys=True)
                print(f"{method}: ranges identical with {binning} binning ({BINNINGS[binning]}): {same}")
        print(f"1-minute load at the end {os.getloadavg()[0]:.1f} (a loaded machine: quote the ratios, not the seconds)")
        if args.explain_minmax:
            explain_minmax(model, feeds, variant)
        if args.profile:
            print(f"\ncProfile (CPU seconds of this process), one {args.profile} run:\n" + profile(runs[args.profile], feeds))


if __name__ == "__main__":
    main()
