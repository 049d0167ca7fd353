"""What the FP16 pre-flight scan costs, as a ratio to one FP32 pass over the same samples.

    python benchmarks/fp16_preflight.py --recipe recipes/edge-cpu-det.yaml --samples 8 --rounds 3

Both are measured in the same process, interleaved (FP32 pass, scan, FP32 pass, scan, ...), and the medians
are printed: the FP32 pass is a plain onnxruntime session (default optimisation, the recipe's thread count)
run over the recipe's first `--samples` calibration samples; the scan is `quant.fp16.scan.scan` on the
normalised model over the same feeds (per-tensor |x|max probes, count probes, ORT_DISABLE_ALL, as a repair run
does). Normalisation is timed once (it is cached across runs). On a shared machine the absolute seconds move
with the load; the ratio is the figure to quote.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from quant.data.feeds import checked_feeds
from quant.data.sources import open_source
from quant.fp16.normalise import normalised_model
from quant.fp16.scan import scan
from quant.model import inspect_model, locate, session
from quant.recipe.loader import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    loaded = load_recipe(args.recipe)
    recipe = loaded.recipe
    assert recipe.calibration is not None, "the recipe needs a calibration set"
    info = inspect_model(locate(recipe.model, loaded.base_dir))
    source = open_source(recipe.calibration, loaded.base_dir, recipe.inputs, list(info.inputs), "calibration").subset(args.samples)
    feeds = [f for _, f in checked_feeds(source, info.inputs)]
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        normalised = normalised_model(info.path, info.sha256, True, Path(cache))
        normalise_seconds = time.perf_counter() - started
        fp32 = session(info.path, threads=recipe.bench.threads)
        fp32.run(None, feeds[0])  # warm-up
        passes, scans = [], []
        for _ in range(args.rounds):
            started = time.perf_counter()
            for feed in feeds:
                fp32.run(None, feed)
            passes.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = scan(normalised, feeds, 4.0)
            scans.append(time.perf_counter() - started)
    fp32_median, scan_median = statistics.median(passes), statistics.median(scans)
    print(f"model {info.path.name}, {len(feeds)} calibration samples, {args.rounds} interleaved rounds, {recipe.bench.threads} thread(s)")
    print(f"normalise (once, then cached): {normalise_seconds:.2f} s")
    print(f"FP32 pass: median {fp32_median:.2f} s ({fp32_median / len(feeds):.3f} s/sample)")
    print(f"scan:      median {scan_median:.2f} s ({scan_median / len(feeds):.3f} s/sample), {result.tensors_observed} tensors observed")
    print(f"scan / FP32 pass: {scan_median / fp32_median:.2f}x")


if __name__ == "__main__":
    main()
