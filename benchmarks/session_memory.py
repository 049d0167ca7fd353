"""Peak memory of one onnxruntime session run over a recipe's evaluation samples, by session option.

    python benchmarks/session_memory.py                                  # edge-cpu.yaml, all evaluation samples
    python benchmarks/session_memory.py --samples 200 --recipe recipes/edge-cpu-det.yaml

Why: a whole `quantize --recipe recipes/edge-cpu.yaml` run peaks far above its calibration (issue 14).
Inputs of many distinct shapes (text lines of every width) make onnxruntime plan and cache one memory
pattern per shape (`enable_mem_pattern`, on by default) and grow its CPU arena to the largest. Each
setting runs in its own process, so the peak (`wait4`'s ru_maxrss, as `/usr/bin/time -v`) is that
session's alone: the process after loading the data (no session), then the FP32 model as `quant.model.session`
makes it (mem patterns on), with mem patterns off, and with the arena off too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("no session", "quant.model.session (default options)", "enable_mem_pattern=False", "mem pattern and arena off")


def worker(recipe: Path, samples: int | None, setting: str) -> dict:
    sys.path.insert(0, str(REPO))
    import onnxruntime as ort

    from quant.checks import check_inputs
    from quant.data.feeds import checked_feeds
    from quant.recipe.loader import load_recipe

    loaded = load_recipe(str(recipe))
    inputs = check_inputs(loaded, (), None, True)
    source = inputs.evaluation if samples is None else inputs.evaluation.subset(samples)
    feeds = [f for _, f in checked_feeds(source, inputs.model.inputs)]  # held in both settings alike
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if setting != "no session":
        options = ort.SessionOptions()  # as quant.model.session
        options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 2, 1, 3
        if setting != SETTINGS[1]:
            options.enable_mem_pattern = False
        if setting == SETTINGS[3]:
            options.enable_cpu_mem_arena = False
        session = ort.InferenceSession(str(inputs.model.path), options, providers=["CPUExecutionProvider"])
        for feed in feeds:
            session.run(None, feed)
    shapes = len({tuple(v.shape for v in f.values()) for f in feeds})
    return {"samples": len(feeds), "shapes": shapes, "data_peak_mb": before, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "edge-cpu.yaml")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.recipe, args.samples, args.worker)))
        return
    print(f"{args.recipe.name}: evaluation samples, FP32 model; 1-minute load {os.getloadavg()[0]:.1f}")
    print(f"{'setting':42} {'peak RSS MB':>12} {'s':>7}")
    for setting in SETTINGS:
        command = [sys.executable, __file__, "--recipe", str(args.recipe), "--worker", setting]
        command += ["--samples", str(args.samples)] if args.samples else []
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        _, _, usage = os.wait4(process.pid, 0)  # this child's own rusage (its output is one short line: no pipe stall)
        assert process.stdout is not None
        result = json.loads(process.stdout.read().strip().splitlines()[-1])
        peak = usage.ru_maxrss / 1024
        print(f"{setting:42} {peak:12.0f} {result['seconds']:7.1f}   ({result['samples']} samples, {result['shapes']} shapes)")


if __name__ == "__main__":
    main()
