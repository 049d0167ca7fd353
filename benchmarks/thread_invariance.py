"""Do a model's outputs depend on onnxruntime's intra-op thread count? Per model and optimisation level: whether the
outputs at 1 and at 2 threads are bit-identical on a recipe's first evaluation samples, the largest difference, and
the wall time of each (one run each: a timing to read, not to quote).

    python benchmarks/thread_invariance.py --recipe recipes/edge-cpu.yaml --samples 40 runs/x/variants/*.onnx
    python benchmarks/thread_invariance.py --recipe recipes/edge-cpu-det.yaml --samples 4

`--jobs N` gives an inference unit (FP32 reference, evaluation: ORT_ENABLE_ALL) its share of the cores instead of the
recipe's bench.threads (quant/cores.py) because these outputs were measured equal at 1 and 2 threads on every default
variant; calibration (ORT_DISABLE_ALL) keeps bench.threads because its outputs were not. Rerun this on a new model
family before trusting --jobs to give it the serial metrics to the bit (benchmarks/jobs.py checks a whole run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _session(path: Path, threads: int, optimize: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def main() -> None:
    from quant.checks import check_inputs
    from quant.data.feeds import checked_feeds
    from quant.recipe.loader import load_recipe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, required=True, help="its model (FP32) and evaluation samples")
    parser.add_argument("--samples", type=int, default=20, help="first evaluation samples [default: 20]")
    parser.add_argument("--threads", type=int, default=2, help="compared with 1 thread [default: 2]")
    parser.add_argument("variants", nargs="*", type=Path, help="more model files taking the same inputs (built variants)")
    args = parser.parse_args()
    inputs = check_inputs(load_recipe(str(args.recipe.resolve())), (), None, False)
    feeds = [f for _, (_, f) in zip(range(args.samples), checked_feeds(inputs.evaluation, inputs.model.inputs))]
    print(f"{len(feeds)} samples of {args.recipe.name}; onnxruntime {ort.__version__}; 1 vs {args.threads} threads")
    for path in [inputs.model.path, *args.variants]:
        for optimize in (True, False):
            outputs, seconds = {}, {}
            for threads in (1, args.threads):
                session, started = _session(path, threads, optimize), time.perf_counter()
                outputs[threads] = [session.run(None, f) for f in feeds]
                seconds[threads] = time.perf_counter() - started
            pairs = [(a, b) for x, y in zip(outputs[1], outputs[args.threads]) for a, b in zip(x, y)]
            identical = all(np.array_equal(a, b) for a, b in pairs)
            largest = max(float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0 for a, b in pairs)
            level = "ORT_ENABLE_ALL " if optimize else "ORT_DISABLE_ALL"
            print(
                f"{path.name[:40]:40s} {level} bit-identical: {'yes' if identical else 'NO '} largest difference {largest:.3g}"
                f"  ({seconds[1]:.1f} s at 1 thread, {seconds[args.threads]:.1f} s at {args.threads})"
            )


if __name__ == "__main__":
    main()
