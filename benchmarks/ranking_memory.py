"""Peak memory and time of the fallback search's sensitivity ranking, all tensors at once vs in groups.

    nice -n 10 python benchmarks/ranking_memory.py                         # edge-cpu-det.yaml, 8 tuning pages
    python benchmarks/ranking_memory.py --recipe recipes/edge-cpu.yaml --budgets 1e9,256 --rounds 2

Why: a whole `quantize --recipe recipes/edge-cpu-det.yaml` run peaked at ~1.4 GB in its `search ranking`
stage (issue 14): the ranking exposed every compared tensor of the FP32 and the QDQ model as graph outputs,
and onnxruntime holds a graph output until the run ends. quant/sensitivity.py now compares the tensors in
groups of at most `fallback.ranking_memory_mb` per model and sample (one pass over the samples per group).

The ranking's inputs are the search's: the recipe's int8-static variant built as the search's first build
(its `prepare`, calibration and QDQ format, no fallback; cached in --work) and the first `fallback.samples`
tuning samples. Each budget ranks in its own process (the build too: a child's ru_maxrss starts at its
parent's RSS), its peak being `wait4`'s ru_maxrss (as `/usr/bin/time -v`); `data only` loads the samples
and ranks nothing; `baseline` (with --baseline) is the code before groups. Budgets alternate over --rounds;
seconds are medians. The rankings must be identical.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This checkout's quant (not an installed one); a --baseline worker ranks with the checkout it names instead.
sys.path.insert(0, sys.argv[sys.argv.index("--quant") + 1] if "--quant" in sys.argv else str(REPO))
DATA_ONLY = "data only"
BASELINE = "baseline"


def _inputs(recipe: Path, variant: str) -> tuple:
    from quant.checks import check_inputs
    from quant.recipe.loader import load_recipe

    inputs = check_inputs(load_recipe(str(recipe)))
    return inputs, inputs.recipe.variants[variant]


def build(recipe: Path, variant: str, work: Path) -> dict:
    """The prepared FP32 model and its QDQ build, as the search ranks them."""
    from quant.methods.base import BuildContext
    from quant.methods.prepare import prepared_model
    from quant.methods.static_int8 import build_static_int8

    inputs, options = _inputs(recipe, variant)
    model = inputs.model
    context = BuildContext(model.path, model.sha256, model.inputs, work / "build", work / "cache", calibration=inputs.calibration)
    qdq = work / f"{recipe.stem}-{variant}-qdq.onnx"
    build_static_int8(options.model_copy(update={"format": "QDQ", "fallback": None}), context, qdq)
    prepared = prepared_model(context.model_path, context.model_sha256, options.prepare, context.cache_dir)
    return {"float": str(prepared), "qdq": str(qdq)}


def rank(recipe: Path, variant: str, models: dict, budget: str) -> dict:
    from quant.data.feeds import checked_feeds
    from quant.sensitivity import rank_nodes

    inputs, options = _inputs(recipe, variant)
    samples = options.fallback.samples if options.fallback else 8
    feeds = [feed for _, (_, feed) in zip(range(samples), checked_feeds(inputs.tuning, inputs.model.inputs))]
    said: list[str] = []
    started = time.perf_counter()
    found = []
    if budget == BASELINE:  # the code before groups: every tensor at once
        found = rank_nodes(Path(models["float"]), Path(models["qdq"]), feeds, options.op_types)
    elif budget != DATA_ONLY:
        found = rank_nodes(Path(models["float"]), Path(models["qdq"]), feeds, options.op_types, float(budget), said.append)
    ranking = [(n.node, n.added_error, n.output_error) for n in found]
    return {"seconds": time.perf_counter() - started, "samples": len(feeds), "said": said, "ranking": ranking}


def child(args: list[str]) -> tuple[dict, float]:
    """A worker's result and its peak RSS in MB."""
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    output = process.stdout.read() if process.stdout else ""  # read before wait: a long ranking list must not stall the pipe
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"worker {args} failed ({status})")
    return json.loads(output.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "edge-cpu-det.yaml")
    parser.add_argument("--variant", default="int8-static")
    parser.add_argument("--budgets", default="1e9,256", help="MB per model and sample; 1e9: every tensor in one group (before)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "quant-ranking-memory")
    parser.add_argument("--baseline", type=Path, help="quant before groups (git archive 9abfe7b quant | tar -x -C DIR): ranks as `baseline`")
    parser.add_argument("--quant", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "build":
        print(json.dumps(build(args.recipe, args.variant, args.work)))
        return
    if args.worker:
        import quant

        assert Path(quant.__file__).parents[1] == Path(args.quant or REPO).resolve(), f"{quant.__file__} is not the checkout asked for"
        print(json.dumps(rank(args.recipe, args.variant, json.loads(args.models), args.worker)))
        return
    common = ["--recipe", str(args.recipe), "--variant", args.variant, "--work", str(args.work)]
    models, _ = child([*common, "--worker", "build"])
    budgets = [DATA_ONLY, *([BASELINE] if args.baseline else []), *args.budgets.split(",")]
    print(f"{args.recipe.name} {args.variant}: ranking on the tuning samples; 1-minute load {os.getloadavg()[0]:.1f} (2 cores)")
    peaks: dict[str, list[float]] = {b: [] for b in budgets}
    seconds: dict[str, list[float]] = {b: [] for b in budgets}
    rankings: dict[str, list] = {}
    for round_ in range(args.rounds):
        for budget in budgets if round_ % 2 == 0 else [budgets[0], *reversed(budgets[1:])]:
            checkout = ["--quant", str(args.baseline.resolve())] if budget == BASELINE else []
            result, peak = child([*common, *checkout, "--models", json.dumps(models), "--worker", budget])
            peaks[budget].append(peak)
            seconds[budget].append(result["seconds"])
            rankings[budget] = result["ranking"]
            print(f"  round {round_ + 1} {budget:>10}: peak {peak:6.0f} MB {result['seconds']:7.1f} s  {'; '.join(result['said'])}")
    print(f"{'budget MB':>10} {'peak RSS MB':>12} {'s (median)':>11}")
    for budget in budgets:
        print(f"{budget:>10} {max(peaks[budget]):12.0f} {statistics.median(seconds[budget]):11.1f}")
    ranked = [b for b in budgets if b != DATA_ONLY]
    same = all(rankings[b] == rankings[ranked[0]] for b in ranked)
    print(f"rankings identical (node, added and output error, order) across budgets: {same} ({len(rankings[ranked[0]])} nodes)")


if __name__ == "__main__":
    main()
