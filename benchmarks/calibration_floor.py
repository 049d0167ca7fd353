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


def inference(model: Path, optimised: bool) -> Callable[[list[dict[str, np.ndarray]]], None]:
    import onnxruntime as ort

    options = ort.SessionOptions()
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


def calibration(model: Path, method: str, variant: Any, binning: str = "") -> Callable[[list[dict[str, np.ndarray]]], dict]:
    from quant.calibration import streaming
    from quant.calibration.streaming import collect_ranges, quantize_static_default_op_types, ranges_to_json

    def run(feeds: list[dict[str, np.ndarray]]) -> dict:
        add, threads = streaming._Histogram.add, streaming._binning_threads
        if binning in ("serial", "legacy"):
            streaming._binning_threads = lambda _: 1
        if binning == "legacy":
            streaming._Histogram.add = legacy_add  # type: ignore[method-assign]
        try:
            with tempfile.TemporaryDirectory(prefix="quant-calib-floor-") as work:
                ranges = collect_ranges(
                    model, feeds, method, percentile=variant.percentile, work_dir=Path(work),
                    op_types_to_calibrate=variant.op_types or quantize_static_default_op_types(),
                )  # fmt: skip
        finally:
            streaming._Histogram.add, streaming._binning_threads = add, threads  # type: ignore[method-assign]
        return ranges_to_json(ranges)

    return run


def profile(run: Callable[[list[dict[str, np.ndarray]]], Any], feeds: list[dict[str, np.ndarray]], lines: int = 14) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    run(feeds)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


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
    parser.add_argument("--profile", default=None, help="also print cProfile's top lines of one run of this method")
    args = parser.parse_args()
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="quant-calib-floor-cache-") as cache:
        model, feeds, variant = load_case(args.recipe, args.samples, Path(cache))
        methods = [m for m in args.methods.split(",") if m]
        runs: dict[str, Callable[[list[dict[str, np.ndarray]]], Any]] = {
            "floor": inference(model, True), "floor-unopt": inference(model, False)
        }  # fmt: skip
        compared = [b for b in args.compare.split(",") if b]
        unknown = set(compared) - set(BINNINGS)
        if unknown:
            parser.error(f"--compare: unknown {sorted(unknown)}; choose from {sorted(k for k in BINNINGS if k)}")
        for method in methods:
            runs[method] = calibration(model, method, variant)
            for binning in compared if method != "minmax" else []:
                runs[f"{method} ({binning})"] = calibration(model, method, variant, binning)
        print(f"{args.recipe.name}: {len(feeds)} samples, model {model.name}, onnxruntime {ort.__version__}, "
              f"{os.cpu_count()} CPUs, 1-minute load {os.getloadavg()[0]:.1f} at the start")  # fmt: skip
        runs["floor"](feeds[:1])  # warm-up (the calibrations make new sessions each run, as in a build)
        runs["floor-unopt"](feeds[:1])
        seconds: dict[str, list[float]] = defaultdict(list)
        ratios: dict[str, list[float]] = defaultdict(list)
        results: dict[str, Any] = {}
        for round_ in range(args.rounds):
            for name, run in runs.items():
                started = time.perf_counter()
                result = run(feeds)
                seconds[name].append(time.perf_counter() - started)
                if result is not None:
                    results[name] = result
            for name in runs:
                ratios[name].append(seconds[name][round_] / seconds["floor"][round_])
        print(f"\n{'':34} {'median s':>9} {'x floor (median of rounds)':>27}   each round")
        for name in runs:
            each = " ".join(f"{r:.2f}" for r in ratios[name])
            print(f"{name:34} {statistics.median(seconds[name]):9.1f} {statistics.median(ratios[name]):27.2f}   {each}")
        for method in methods:
            for binning in compared if method != "minmax" else []:
                same = json.dumps(results[f"{method} ({binning})"], sort_keys=True) == json.dumps(results[method], sort_keys=True)
                print(f"{method}: ranges identical with {binning} binning ({BINNINGS[binning]}): {same}")
        print(f"1-minute load at the end {os.getloadavg()[0]:.1f} (a loaded machine: quote the ratios, not the seconds)")
        if args.profile:
            print(f"\ncProfile, one {args.profile} run:\n" + profile(runs[args.profile], feeds))


if __name__ == "__main__":
    main()
