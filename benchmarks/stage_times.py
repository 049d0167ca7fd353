"""Where the time of a whole run goes, stage by stage, and how far calibration is above its floor.

    python benchmarks/stage_times.py                                   # edge-cpu.yaml, then edge-cpu-det.yaml
    python benchmarks/stage_times.py --recipe recipes/edge-cpu.yaml --calibration-methods minmax,percentile,entropy

Each recipe runs as `quantize` in a subprocess with a fresh cache (nothing reused: the FP32 reference and
the calibration are measured too) and its releases in a scratch folder (a recipe extending the shipped one;
nothing is written next to the repository). The stages come from the run's own record (results.json
`stages`, `quant/stages.py`): each build and its calibration, each evaluation and latency benchmark, the
search's builds, evaluations on the tuning split and ranking; `report` is the time to write the report
files again from results.json, `other` what no stage covers (start-up, imports, checks of a stage's own).

Memory: the largest resident set of any one process of the run (what `/usr/bin/time -v` reports for a
process tree: `wait4`'s ru_maxrss), the run process's own peak (its VmHWM, sampled), each build's peak
(results.json) and the largest sum over the tree at any sample.

Calibration floor: plain FP32 inference (onnxruntime, all optimisations, the calibration's thread count)
of the model calibrated (after `prepare`) over the same calibration samples: calibration runs the model at
least once per sample, so it cannot be cheaper. `--calibration-methods` also calibrates that model with each
method named (fresh each time) and prints its ratio to the floor. Run on a quiet machine for figures to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_RECIPES = ("recipes/edge-cpu.yaml", "recipes/edge-cpu-det.yaml")


# --------------------------------------------------------------------------- running a recipe


def scratch_recipe(recipe: Path, folder: Path) -> Path:
    """The shipped recipe with its releases in `folder` (so the benchmark never writes into the repository)."""
    path = folder / f"bench-{recipe.stem}.yaml"
    path.write_text(f"extends: {recipe.resolve()}\npromotion: {{to: {folder / 'releases'}}}\n", encoding="utf-8")
    return path


class TreeMemory:
    """Samples the RSS of a process and all its descendants (psutil) until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_tree_mb, self.root_hwm_mb = pid, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                self.peak_tree_mb = max(self.peak_tree_mb, sum(_rss(p) for p in tree) / 2**20)
                self.root_hwm_mb = max(self.root_hwm_mb, _high_water_mb(self.pid))
            except psutil.Error:  # the run ended between two samples
                pass
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _rss(process: Any) -> int:
    try:
        return process.memory_info().rss
    except Exception:  # psutil.NoSuchProcess: a child that just ended
        return 0


def _high_water_mb(pid: int) -> float:
    """The process's own peak resident set (VmHWM: psutil does not expose it)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return next((int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:")), 0.0)
    except OSError:
        return 0.0


def run_quantize(recipes: list[Path], folder: Path, jobs: int = 1, only: list[str] | None = None, args: Sequence[str] = ()) -> dict[str, Any]:
    """`quantize` on the recipes (one invocation) in a subprocess: wall time, exit code, memory, each run's results.json.
    `args`: more options (e.g. --executor ray, instead of --jobs)."""
    out, cache = folder / "run", folder / "cache"
    command = [sys.executable, "-m", "quant.cli", "--out", str(out), "--cache", str(cache), "--quiet", *(args or ["--jobs", str(jobs)])]
    command += ["--allow-extends-from", str(REPO / "recipes")]
    for recipe in recipes:
        command += ["--recipe", str(scratch_recipe(recipe, folder))]
    for variant in only or []:
        command += ["--only", variant]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    with open(folder / "stdout.txt", "w", encoding="utf-8") as stdout, open(folder / "stderr.txt", "w", encoding="utf-8") as stderr:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=stdout, stderr=stderr)
        memory = TreeMemory(process.pid)
        _, status, usage = os.wait4(process.pid, 0)  # its rusage: ru_maxrss is the largest process of the tree
    memory.stop()
    wall = time.perf_counter() - started
    runs = sorted(out.glob("*/results.json")) or sorted(out.glob("results.json"))
    return {
        "wall": wall,
        "exit_code": os.waitstatus_to_exitcode(status),
        "largest_process_mb": usage.ru_maxrss / 1024,
        "tree_peak_mb": memory.peak_tree_mb,
        "run_process_peak_mb": memory.root_hwm_mb,
        "results": {json.loads(p.read_text())["recipe"]["name"]: json.loads(p.read_text()) for p in runs},
        "out": out,
    }


# --------------------------------------------------------------------------- the stage table


def stage_label(stage: dict[str, Any]) -> str:
    variant = f" {stage['variant']}" if stage["variant"] else ""
    split = f" ({stage['split']})" if stage["split"] and stage["stage"] != "reference" else ""
    if stage["stage"] == "reference":
        return f"reference ({stage['split']})"
    return f"{stage['stage']}{variant}{split}"


def exclusive_seconds(stages: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per label; a stage that holds others (a build its calibration, fp16 repair its evaluations) minus them."""
    totals: dict[str, float] = defaultdict(float)
    for stage in stages:
        inner = sum(
            other["seconds"]
            for other in stages
            if other is not stage
            and other["variant"] == stage["variant"]
            and other["started"] >= stage["started"]
            and other["started"] + other["seconds"] <= stage["started"] + stage["seconds"] + 1e-3
            and (other["seconds"], other["started"]) != (stage["seconds"], stage["started"])
        )
        totals[stage_label(stage)] += max(0.0, stage["seconds"] - inner)
    return totals


def report_seconds(results: dict[str, Any], folder: Path) -> float:
    """The time to write the run's report files (results.json, summary.md, report.html) again from its results."""
    from quant.report.files import write_run_reports
    from quant.report.summary import summary_markdown  # noqa: F401  (imported before timing)
    from quant.results import RunResults

    document = RunResults.model_validate(results)
    summary = (folder / "run").joinpath(results["recipe"]["name"], "summary.md")
    text = summary.read_text(encoding="utf-8") if summary.is_file() else ""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        write_run_reports(Path(scratch), document, text)
    return time.perf_counter() - started


def print_stage_table(name: str, results: dict[str, Any], wall: float, report: float) -> None:
    totals = exclusive_seconds(results["stages"])
    totals["report (writing the files)"] = report
    covered = sum(totals.values())
    print(f"\n## {name}: {wall:.1f} s wall (one run, serial), exit {results['exit_code']}")
    print(f"{'stage':<48} {'seconds':>9} {'share':>7}")
    for label, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"{label:<48} {seconds:>9.1f} {seconds / wall:>7.1%}")
    print(f"{'other (start-up, imports, process starts)':<48} {max(0.0, wall - covered):>9.1f} {max(0.0, wall - covered) / wall:>7.1%}")
    grouped: dict[str, float] = defaultdict(float)
    for label, seconds in totals.items():
        grouped[label.split(" ")[0] if not label.startswith("search") else " ".join(label.split(" ")[:2])] += seconds
    print("by kind: " + ", ".join(f"{kind} {seconds / wall:.0%}" for kind, seconds in sorted(grouped.items(), key=lambda item: -item[1])))


# --------------------------------------------------------------------------- calibration vs its floor


def calibration_floor(recipe_path: Path, results: dict[str, Any], methods: list[str]) -> None:
    """Each static_int8 variant's calibration time over plain FP32 inference of the same samples."""
    import onnxruntime as ort

    from quant.calibration.ranges import SourceFeeds
    from quant.calibration.streaming import collect_ranges, quantize_static_default_op_types
    from quant.checks import check_inputs
    from quant.recipe.loader import load_recipe

    loaded = load_recipe(str(recipe_path))
    inputs = check_inputs(loaded, (), None, True)
    for name, variant in loaded.recipe.variants.items():
        build = results["variants"].get(name, {}).get("build") or {}
        calibrated = [s for s in results["stages"] if s["stage"] == "calibration" and s["variant"] == name]
        if variant.method != "static_int8" or not calibrated or inputs.calibration is None:
            continue
        prepared = Path(build.get("prepared_model") or inputs.model.path)
        source = inputs.calibration.subset(variant.calibration_samples)
        feeds = list(SourceFeeds(source, inputs.model.inputs))
        options = ort.SessionOptions()  # the calibration's own thread count: onnxruntime's default
        session = ort.InferenceSession(str(prepared), options, providers=["CPUExecutionProvider"])
        session.run(None, feeds[0])  # warm-up
        started = time.perf_counter()
        for feed in feeds:
            session.run(None, feed)
        floor = time.perf_counter() - started
        seconds = calibrated[0]["seconds"]
        print(f"\n{loaded.recipe.name} {name}: {variant.calibrate} calibration {seconds:.1f} s on {len(feeds)} samples; "
              f"FP32 inference of the same samples {floor:.1f} s; ratio {seconds / floor:.2f}x")  # fmt: skip
        for method in methods:
            with tempfile.TemporaryDirectory(prefix="quant-calib-bench-") as work:
                started = time.perf_counter()
                collect_ranges(
                    prepared, feeds, method, percentile=variant.percentile, work_dir=Path(work),
                    op_types_to_calibrate=variant.op_types or quantize_static_default_op_types(),
                )  # fmt: skip
                took = time.perf_counter() - started
            print(f"  {method:<12} {took:7.1f} s  {took / floor:5.2f}x the floor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", type=Path, help=f"recipe to run (repeatable) [default: {', '.join(DEFAULT_RECIPES)}]")
    parser.add_argument("--calibration-methods", default="", help="also calibrate with these methods (comma-separated), each vs the floor")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    recipes = args.recipe or [REPO / r for r in DEFAULT_RECIPES]
    methods = [m for m in args.calibration_methods.split(",") if m]
    print(f"machine: {os.cpu_count()} CPUs, 1-minute load {os.getloadavg()[0]:.1f} at the start")
    for recipe in recipes:
        folder = Path(tempfile.mkdtemp(prefix="quant-stages-")) if args.keep is None else args.keep / recipe.stem
        folder.mkdir(parents=True, exist_ok=True)
        run = run_quantize([recipe], folder)
        if not run["results"]:
            print(f"\n{recipe}: no results (exit {run['exit_code']}); see {folder / 'stderr.txt'}")
            continue
        ((name, results),) = run["results"].items()
        print_stage_table(name, results, run["wall"], report_seconds(results, folder))
        builds = {v: (d.get("build") or {}).get("build_peak_rss_mb") for v, d in results["variants"].items()}
        print(f"memory: largest process {run['largest_process_mb']:.0f} MB (as /usr/bin/time -v), run process {run['run_process_peak_mb']:.0f} MB, "
              f"whole tree at once {run['tree_peak_mb']:.0f} MB")  # fmt: skip
        print("builds' peaks: " + ", ".join(f"{v} {mb:.0f} MB" for v, mb in builds.items() if mb))
        calibration_floor(recipe, results, methods)
    print(f"\n1-minute load at the end {os.getloadavg()[0]:.1f} (figures measured under load are not to be quoted)")


if __name__ == "__main__":
    main()
