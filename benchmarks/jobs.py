"""`quantize --jobs 2` vs serial on the default recipes, in one run: the wall-time ratio, and proof that both
give the same verdicts and model bytes.

    python benchmarks/jobs.py             # edge-cpu.yaml + edge-cpu-det.yaml: serial, then --jobs 2
    python benchmarks/jobs.py --rounds 2  # serial, --jobs 2, --jobs 2, serial (drift in the load hits both alike)
    python benchmarks/jobs.py --only fp16 # a quicker check: one variant of each recipe

Each invocation is `quantize --recipe <rec> --recipe <det>` in a subprocess with a fresh cache (nothing reused,
so both sides do the same work: FP32 references, calibrations, builds, searches, evaluations, latency), releases
in a scratch folder. With several rounds the sides alternate (ABBA) so drift in the machine's load hits both;
the ratio is of the median wall times. Latency is measured alone in both (it is part of both walls).
Verdicts, exit codes, every variant's model bytes (sha256 of `variants/*.onnx`) and its metrics must be equal
on every run; a difference is printed and the script exits 1. Quote figures only from a quiet machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_times import DEFAULT_RECIPES, REPO, run_quantize

MEASURED = {"started", "finished", "created", "seconds", "build_seconds", "calibration_seconds", "build_peak_rss_mb", "latency", "latency_ratio"}


def fingerprint(run: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on --jobs: exit code, each recipe's verdict, each variant's status, model bytes and metrics."""
    out: Path = run["out"]
    recipes = {}
    for name, results in run["results"].items():
        variants = {}
        for variant, record in results["variants"].items():
            model = out / name / "variants" / f"{variant}.onnx"
            variants[variant] = {
                "status": record.get("status"),
                "sha256": hashlib.sha256(model.read_bytes()).hexdigest() if model.is_file() else None,
                "metrics": _without_measured(record.get("metrics")),
                "gates": [(g["metric"], g["verdict"]) for g in record.get("gates", []) if g["metric"] != "latency_ratio"],
            }
        recipes[name] = {"verdict": results["verdict"], "exit_code": results["exit_code"], "variants": variants}
    return {"exit_code": run["exit_code"], "recipes": recipes}


def _without_measured(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_measured(v) for k, v in node.items() if k not in MEASURED}
    if isinstance(node, list):
        return [_without_measured(v) for v in node]
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", type=Path, help=f"recipes (repeatable) [default: {', '.join(DEFAULT_RECIPES)}]")
    parser.add_argument("--jobs", type=int, default=2, help="the parallel side's --jobs [default: 2]")
    parser.add_argument("--rounds", type=int, default=1, help="serial/parallel pairs, alternating [default: 1]")
    parser.add_argument("--only", action="append", default=[], metavar="VARIANT", help="passed to quantize: only this variant (repeatable)")
    args = parser.parse_args()
    recipes = args.recipe or [REPO / r for r in DEFAULT_RECIPES]
    print(f"machine: {os.cpu_count()} CPUs, 1-minute load {os.getloadavg()[0]:.1f} at the start")
    walls: dict[int, list[float]] = {1: [], args.jobs: []}
    reference: dict[str, Any] | None = None
    same = True
    with tempfile.TemporaryDirectory(prefix="quant-jobs-bench-") as scratch:
        for round_index in range(args.rounds):
            for jobs in (1, args.jobs) if round_index % 2 == 0 else (args.jobs, 1):
                folder = Path(scratch) / f"r{round_index}-j{jobs}"
                folder.mkdir()
                run = run_quantize(recipes, folder, jobs=jobs, only=args.only)
                walls[jobs].append(run["wall"])
                seen = fingerprint(run)
                verdicts = ", ".join(f"{n}: {r['verdict'][:60]}" for n, r in seen["recipes"].items())
                load = os.getloadavg()[0]
                print(f"round {round_index + 1} --jobs {jobs}: {run['wall']:.1f} s, exit {run['exit_code']}, load {load:.1f}; {verdicts}")
                if not run["results"]:
                    print(f"  no results: see {folder / 'stderr.txt'}")
                    same = False
                    continue
                if reference is None:
                    reference = seen
                elif seen != reference:
                    same = False
                    print("  DIFFERS from the first run:\n  " + json.dumps(seen, sort_keys=True)[:3000])
    serial, parallel = statistics.median(walls[1]), statistics.median(walls[args.jobs])
    ratio = parallel / serial
    print(f"\nserial median {serial:.1f} s, --jobs {args.jobs} median {parallel:.1f} s: ratio {ratio:.2f} ({1 / ratio:.2f}x as fast)")
    print(f"verdicts, exit codes, model bytes and metrics identical on every run: {'yes' if same else 'NO'}")
    print(f"1-minute load at the end {os.getloadavg()[0]:.1f} (a ratio measured under load is not to be quoted)")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
