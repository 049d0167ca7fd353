"""Serial vs `--jobs 2` (and vs `--executor ray`) on the default recipes, in one run: the wall-time ratios, and whether
all give the same verdicts, model bytes and metrics.

    python benchmarks/jobs.py                        # edge-cpu.yaml + edge-cpu-det.yaml: serial, then --jobs 2
    python benchmarks/jobs.py --ray --rounds 2       # serial, --jobs 2, ray; then ray, --jobs 2, serial
    python benchmarks/jobs.py --ray --reversed       # ray, --jobs 2, serial: the second round of an ABBA pair, run apart
    python benchmarks/jobs.py --only fp16            # a quicker check: one variant of each recipe

Each invocation is `quantize --recipe <rec> --recipe <det>` in a subprocess with a fresh cache (nothing reused,
so every side does the same work: FP32 references, calibrations, builds, searches, evaluations, latency), releases
in a scratch folder. `--ray` adds a side with `--executor ray` and no address: a local Ray cluster on this machine's
cores, started by the command (its start-up is part of its wall, as a user would see it). With several rounds the
order of the sides reverses every round (ABBA: drift in the machine's load hits every side alike); each ratio is of
median wall times. Latency is measured alone in every side (it is part of every wall).

Compared with the first serial run, separately: the model bytes (sha256 of `variants/*.onnx`), the accuracy (every
metric and accuracy gate verdict), and the verdicts (exit code, each recipe's verdict, each variant's status).
Bytes and accuracy must be equal (else exit 1). A verdict may still differ through a latency gate alone (a ratio
measured near its threshold can come out inconclusive in one run and pass in the next, serial or not): that is
printed as such, with the latency ratios. Quote figures only from a quiet machine.
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
LATENCY_METRICS = {"latency_ratio", "image_latency_ratio", "token_latency_ratio"}


def fingerprint(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What must not depend on how the work ran, in three parts: model bytes, accuracy, verdicts (and the latency behind them)."""
    out: Path = run["out"]
    parts: dict[str, dict[str, Any]] = {"bytes": {}, "accuracy": {}, "verdicts": {"exit_code": run["exit_code"]}, "latency": {}}
    for name, results in run["results"].items():
        folder = out / name if len(run["results"]) > 1 else out
        parts["verdicts"][name] = {"verdict": results["verdict"], "exit_code": results["exit_code"]}
        for variant, record in results["variants"].items():
            key = f"{name}/{variant}"
            model = folder / "variants" / f"{variant}.onnx"
            parts["bytes"][key] = hashlib.sha256(model.read_bytes()).hexdigest() if model.is_file() else None
            gates = record.get("gates", [])
            parts["accuracy"][key] = {
                "metrics": _without_measured(record.get("metrics")),
                "gates": [(g["metric"], g.get("output"), g["verdict"]) for g in gates if g["metric"] not in LATENCY_METRICS],
            }
            parts["verdicts"][key] = record.get("status")
            parts["latency"][key] = [(g["metric"], g["verdict"], g.get("observed")) for g in gates if g["metric"] in LATENCY_METRICS]
    return parts


def _without_measured(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_measured(v) for k, v in node.items() if k not in MEASURED}
    if isinstance(node, list):
        return [_without_measured(v) for v in node]
    return node


def _differences(seen: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """Keys of a part whose values differ from the reference's."""
    return sorted(str(k) for k in set(seen) | set(reference) if seen.get(k) != reference.get(k))


def compare(seen: dict[str, dict[str, Any]], reference: dict[str, dict[str, Any]]) -> tuple[bool, list[str]]:
    """(bytes and accuracy equal, lines describing every difference)."""
    lines, same = [], True
    for part in ("bytes", "accuracy"):
        differing = _differences(seen[part], reference[part])
        if differing:
            same = False
            lines.append(f"  {part} DIFFER: {', '.join(differing)}")
            for key in differing[:3]:
                lines.append(f"    {key}: {json.dumps(seen[part].get(key), sort_keys=True)[:600]}")
                lines.append(f"    serial: {json.dumps(reference[part].get(key), sort_keys=True)[:600]}")
    differing = _differences(seen["verdicts"], reference["verdicts"])
    if differing:
        latency_only = same and all(k == "exit_code" or "/" not in k or seen["latency"].get(k) != reference["latency"].get(k) for k in differing)
        why = "through latency gates alone (accuracy equal)" if latency_only else "NOT explained by latency"
        lines.append(f"  verdicts differ {why}: {', '.join(differing)}")
        for key in (k for k in differing if "/" in k):
            ours, theirs = (f"{part['verdicts'][key]} {part['latency'].get(key)}" for part in (seen, reference))
            lines.append(f"    {key}: {ours} vs serial {theirs}")
    return same, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", type=Path, help=f"recipes (repeatable) [default: {', '.join(DEFAULT_RECIPES)}]")
    parser.add_argument("--jobs", type=int, default=2, help="the parallel side's --jobs [default: 2]")
    parser.add_argument("--ray", action="store_true", help="add a side with --executor ray (a local Ray cluster the command starts)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every side, the order reversed every round [default: 1]")
    parser.add_argument("--reversed", action="store_true", help="start with the reversed order (ray, --jobs, serial): a second round run apart")
    parser.add_argument("--only", action="append", default=[], metavar="VARIANT", help="passed to quantize: only this variant (repeatable)")
    parser.add_argument("--keep", type=Path, help="keep every side's run folder (results.json, summary.md) under this new folder")
    args = parser.parse_args()
    recipes = args.recipe or [REPO / r for r in DEFAULT_RECIPES]
    sides: dict[str, list[str]] = {"serial": ["--jobs", "1"], f"--jobs {args.jobs}": ["--jobs", str(args.jobs)]}
    if args.ray:
        sides["--executor ray"] = ["--executor", "ray"]
    print(f"machine: {os.cpu_count()} CPUs, 1-minute load {os.getloadavg()[0]:.1f} at the start; recipes: {', '.join(r.name for r in recipes)}")
    walls: dict[str, list[float]] = {side: [] for side in sides}
    reference: dict[str, Any] | None = None
    same, verdicts_same = True, True
    if args.keep:
        args.keep.mkdir(parents=True)  # a new folder: never mix two benchmarks' runs
    with tempfile.TemporaryDirectory(prefix="quant-jobs-bench-") as temporary:
        scratch = str(args.keep or temporary)
        for round_index in range(args.rounds):
            order = list(sides) if (round_index + args.reversed) % 2 == 0 else list(reversed(sides))
            for side in order:
                folder = Path(scratch) / f"r{round_index}-{side.strip('-').replace(' ', '-')}"
                folder.mkdir()
                run = run_quantize(recipes, folder, only=args.only, args=sides[side])
                walls[side].append(run["wall"])
                print(f"round {round_index + 1} {side}: {run['wall']:.1f} s, exit {run['exit_code']}, load {os.getloadavg()[0]:.1f}", flush=True)
                if not run["results"]:
                    print(f"  no results: {(folder / 'stderr.txt').read_text()[-1500:]}")
                    same = False
                    continue
                seen = fingerprint(run)
                for name, verdict in seen["verdicts"].items():
                    if isinstance(verdict, dict):
                        print(f"  {name}: {verdict['verdict'][:100]}")
                if reference is None:
                    if side != "serial":
                        print("  (the first run compared against is not serial: read the comparisons as against this side)")
                    reference = seen
                    continue
                equal, lines = compare(seen, reference)
                same = same and equal
                verdicts_same = verdicts_same and not any(line.startswith("  verdicts") for line in lines)
                print("\n".join(lines) if lines else "  model bytes, accuracy and verdicts identical to the first run")
    serial = statistics.median(walls["serial"])
    print(f"\nserial median {serial:.1f} s over {len(walls['serial'])} run(s)")
    for side, measured in walls.items():
        if side != "serial":
            ratio = statistics.median(measured) / serial
            print(f"{side} median {statistics.median(measured):.1f} s: wall ratio to serial {ratio:.2f} ({1 / ratio:.2f}x as fast)")
    print(f"model bytes and accuracy identical on every run: {'yes' if same else 'NO'}")
    print(f"verdicts identical on every run: {'yes' if verdicts_same else 'no (see above: latency gates alone, or not)'}")
    print(f"1-minute load at the end {os.getloadavg()[0]:.1f} (a ratio measured under load is not to be quoted)")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
