"""Which latency-ratio estimator is honest and tight: all of them on the SAME timed rounds.

    PYTHONPATH=. python benchmarks/latency_estimators.py --recipe recipes/edge-cpu-det.yaml \
        --variant /tmp/lat/det/variants/fp16.onnx --rounds 30 --samples 8

Times the recipe's FP32 model and a built variant (or `--reference` and `--variant`, any two ONNX models
with the same inputs) on the recipe's first `--samples` evaluation inputs, `--threads` onnxruntime
threads (the recipe's by default). Each cycle holds two schedules, both seeing the same load:
- a blocked round, as quant.bench times it: FP32 runs all samples, then the variant does (ABBA order);
  every sample's time is kept, so a round of k < samples is the sum of its first k samples;
- a sample-interleaved round: each sample runs on FP32 and on the variant back to back (order alternating).
From those rounds it prints the point and 95 % interval of each estimator:
  ratio-of-medians/bootstrap  median(variant rounds) / median(FP32 rounds), bootstrap over paired rounds
                              (quant's estimator before this script)
  median/bootstrap            median of the per-round ratios, same bootstrap
  median/sign-test            median of the per-round ratios, order-statistic interval (distribution-free)
  geomean/t                   exp(mean of the per-round log ratios), t interval
  geomean/bootstrap           the same, bootstrap interval
  HL/signed-rank              Hodges-Lehmann estimate of the log ratios, Wilcoxon signed-rank interval
for the blocked rounds with 1..samples samples per round, for the first N rounds, and for the
sample-interleaved rounds. The machine may be shared: compare the widths within one run, not across runs.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from quant.data.feeds import checked_feeds
from quant.data.sources import open_source
from quant.intervals import Interval, paired_statistic_interval
from quant.model import inspect_model, locate, session
from quant.paired_ratio import hodges_lehmann_ratio, log_ratios, median_ratio
from quant.recipe.loader import load_recipe

Estimator = Callable[[np.ndarray, np.ndarray], tuple[float, Interval]]


def _ratio_of_medians(ref: np.ndarray, var: np.ndarray) -> tuple[float, Interval]:
    interval = paired_statistic_interval(ref, var, lambda r, v: np.median(v, axis=-1) / np.median(r, axis=-1))
    return float(np.median(var) / np.median(ref)), interval


def _median_bootstrap(ref: np.ndarray, var: np.ndarray) -> tuple[float, Interval]:
    interval = paired_statistic_interval(ref, var, lambda r, v: np.median(v / r, axis=-1))
    return float(np.median(var / ref)), interval


def _geomean_t(ref: np.ndarray, var: np.ndarray) -> tuple[float, Interval]:
    from scipy.stats import t  # an optional extra: only this benchmark needs it

    logs = log_ratios(ref, var)
    half = t.ppf(0.975, logs.size - 1) * logs.std(ddof=1) / math.sqrt(logs.size)
    return math.exp(logs.mean()), Interval(math.exp(logs.mean() - half), math.exp(logs.mean() + half), logs.size, "exact")


def _geomean_bootstrap(ref: np.ndarray, var: np.ndarray) -> tuple[float, Interval]:
    interval = paired_statistic_interval(ref, var, lambda r, v: np.exp(np.mean(np.log(v / r), axis=-1)))
    return math.exp(float(log_ratios(ref, var).mean())), interval


ESTIMATORS: dict[str, Estimator] = {
    "ratio-of-medians/bootstrap": _ratio_of_medians,
    "median/bootstrap": _median_bootstrap,
    "median/sign-test": median_ratio,
    "geomean/t": _geomean_t,
    "geomean/bootstrap": _geomean_bootstrap,
    "HL/signed-rank": hodges_lehmann_ratio,
}


def _timed(model, names: list[str], feed: dict[str, np.ndarray]) -> float:
    started = time.perf_counter()
    model.run(names, feed)
    return time.perf_counter() - started


def record(reference_path: Path, variant_path: Path, feeds: list, rounds: int, threads: int, warmup: int) -> dict[str, np.ndarray]:
    """(rounds, samples) seconds per model, for the blocked and the sample-interleaved schedule."""
    models = [session(reference_path, threads=threads), session(variant_path, threads=threads)]
    names = [[o.name for o in m.get_outputs()] for m in models]
    for _ in range(warmup):
        for which in (0, 1):
            for feed in feeds:
                models[which].run(names[which], feed)
    blocked = np.zeros((2, rounds, len(feeds)))
    interleaved = np.zeros((2, rounds, len(feeds)))
    for cycle in range(rounds):
        for which in (0, 1) if cycle % 2 == 0 else (1, 0):  # ABBA, as quant.bench
            for j, feed in enumerate(feeds):
                blocked[which, cycle, j] = _timed(models[which], names[which], feed)
        for j, feed in enumerate(feeds):
            for which in (0, 1) if (cycle + j) % 2 == 0 else (1, 0):
                interleaved[which, cycle, j] = _timed(models[which], names[which], feed)
    return {"blocked": blocked, "interleaved": interleaved}


def table(title: str, ref: np.ndarray, var: np.ndarray, bound: float) -> None:
    print(f"\n{title}: {ref.size} rounds")
    print(f"  {'estimator':28} {'point':>7} {'low':>7} {'high':>7} {'width':>7}  vs <= {bound:g}")
    for name, estimate in ESTIMATORS.items():
        point, interval = estimate(ref, var)
        verdict = "pass" if interval.high <= bound else "fail" if interval.low > bound else "undecided"
        print(f"  {name:28} {point:7.3f} {interval.low:7.3f} {interval.high:7.3f} {interval.high - interval.low:7.3f}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True, help="for its FP32 model, evaluation inputs and threads")
    parser.add_argument("--variant", type=Path, required=True)
    parser.add_argument("--reference", type=Path, help="default: the recipe's model")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--bound", type=float, default=1.05, help="the latency gate's max, to show which would decide")
    args = parser.parse_args()
    loaded = load_recipe(args.recipe)
    recipe = loaded.recipe
    info = inspect_model(args.reference or locate(recipe.model, loaded.base_dir))
    source = open_source(recipe.evaluation, loaded.base_dir, recipe.inputs, list(info.inputs), "evaluation").subset(args.samples)
    feeds = [f for _, f in checked_feeds(source, info.inputs)]
    threads = args.threads or recipe.bench.threads
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    times = record(info.path, args.variant, feeds, args.rounds, threads, args.warmup)
    seconds = time.perf_counter() - started
    print(f"{info.path.name} vs {args.variant}: {len(feeds)} samples, {args.rounds} cycles, {threads} thread(s), {seconds:.0f} s")
    load_after = os.getloadavg()[0]
    print(f"1-min load before {load_before:.2f}, after {load_after:.2f}, {os.cpu_count()} CPUs (shared machine: compare widths within this run)")
    blocked, interleaved = times["blocked"], times["interleaved"]
    per_round = blocked.sum(axis=2)
    spread = np.percentile(per_round[0], [25, 75]) / np.median(per_round[0])
    print(f"FP32 blocked round: median {np.median(per_round[0]) * 1000:.0f} ms, IQR/median {spread[1] - spread[0]:.2f}")
    for k in sorted({1, 2, 4, len(feeds)} & set(range(1, len(feeds) + 1))):
        totals = blocked[:, :, :k].sum(axis=2)
        table(f"blocked rounds, {k} sample(s) per round", totals[0], totals[1], args.bound)
    totals = blocked.sum(axis=2)
    for n in sorted({11, 15, 22} & set(range(1, args.rounds))):
        table(f"blocked rounds, {len(feeds)} samples, first {n} rounds", totals[0, :n], totals[1, :n], args.bound)
    totals = interleaved.sum(axis=2)
    table(f"sample-interleaved rounds, {len(feeds)} samples per round", totals[0], totals[1], args.bound)
    pairs = interleaved.reshape(2, -1)
    table("sample-interleaved, each sample its own pair", pairs[0], pairs[1], args.bound)


if __name__ == "__main__":
    main()
