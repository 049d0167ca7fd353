"""Size and speed against FP32. Latency is a ratio measured in one process: interleaved (ABBA) rounds.

Each round times FP32 and the variant back to back, so the round's own ratio cancels the machine's load
then; the latency ratio is the Hodges-Lehmann estimate of those per-round ratios, with its signed-rank
interval (quant.paired_ratio). When that interval straddles a latency gate's threshold, more rounds are
measured, within a budget; what is still undecided then is reported as such (the gate says
"inconclusive"), never settled by a coin flip of the noise. The interval's 5 % is split over the looks
the budget allows, so that stopping at the first look that clears a threshold stays a 95 % verdict.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from quant.intervals import LEVEL, Interval
from quant.model import session
from quant.paired_ratio import hodges_lehmann_ratio, level_per_look, min_rounds

Bounds = tuple[float | None, float | None]  # (min, max) of one latency gate
RoundPair = Callable[[int], tuple[float, float]]  # round index -> (FP32 seconds, variant seconds)


@dataclass(frozen=True)
class MachineLoad:
    """What else the machine was doing: 1-minute load averages around the measurement, and its CPUs."""

    cpus: int
    load_before: float
    load_after: float

    @classmethod
    def now(cls, before: float | None = None) -> MachineLoad:
        load = os.getloadavg()[0]
        return cls(os.cpu_count() or 1, load if before is None else before, load)

    def to_dict(self) -> dict[str, float | int]:
        return {"cpus": self.cpus, "load_1m_before": round(self.load_before, 2), "load_1m_after": round(self.load_after, 2)}


@dataclass(frozen=True)
class LatencyResult:
    reference_ms: float  # median per round (all timed samples) for FP32
    variant_ms: float  # (variant_ms / reference_ms is a ratio of medians, not `ratio`: that one keeps the pairing)
    ratio: float  # Hodges-Lehmann estimate of the per-round ratios variant_i / reference_i
    rounds: int
    samples: int
    threads: int
    spread: float  # (p75 - p25) / median of the per-round ratios: how noisy this measurement was
    interval: Interval | None = None  # signed-rank interval of `ratio` over the rounds, at `interval_level`
    decided: bool = True  # False: the interval still straddled a latency threshold when the budget ran out
    extra_rounds: int = 0  # rounds measured after the first look because the interval straddled a threshold
    load: MachineLoad | None = None
    # Coverage of `interval`: 0.95 split over the looks the extra-round budget allows (0.95 with one look), so
    # that stopping as soon as it clears a threshold still leaves a 95 % verdict.
    interval_level: float = LEVEL

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items() if k not in ("interval", "load")
        }
        data["interval"] = self.interval.to_dict() if self.interval else None
        data["load"] = self.load.to_dict() if self.load else None
        return data


def undecided(interval: Interval, bounds: Sequence[Bounds]) -> bool:
    return any(interval.straddles(low, high) for low, high in bounds)


@dataclass
class Rounds:
    """Timed rounds so far, and the rule for measuring more."""

    reference: list[float] = field(default_factory=list)
    variant: list[float] = field(default_factory=list)
    level: float = LEVEL  # coverage of each look's interval
    first: int = 0  # rounds in the first look (bench.rounds, raised to what `level` needs)

    def estimate(self) -> tuple[float, Interval]:
        """The paired latency ratio and its interval at `level` (nan while too few rounds for that level)."""
        return hodges_lehmann_ratio(self.reference, self.variant, self.level)

    def interval(self) -> Interval:
        return self.estimate()[1]


def measure_rounds(
    time_pair: RoundPair,
    *,
    rounds: int,
    bounds: Sequence[Bounds] = (),
    max_rounds: int | None = None,
    max_seconds: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[Rounds, bool]:
    """Measure `rounds` pairs; while the ratio's interval straddles a bound, measure `rounds` more, until
    `max_rounds` pairs or `max_seconds` of extra measuring. Returns (rounds, decided).

    With bounds, each look's interval is at 0.95 split over the looks `max_rounds` allows (Bonferroni), and
    `rounds` is raised to the fewest that can give an interval at that level (8 for 4 looks; 6 for one)."""
    limit = max(max_rounds or rounds, rounds)
    looks = 1 + -(-(limit - rounds) // rounds) if bounds else 1
    level = level_per_look(looks)
    rounds = max(rounds, min_rounds(level))
    limit = max(limit, rounds)
    measured = Rounds(level=level, first=rounds)

    def one_batch(count: int) -> None:
        for _ in range(count):
            ref, var = time_pair(len(measured.reference))
            measured.reference.append(ref)
            measured.variant.append(var)

    one_batch(rounds)
    started = clock()
    while undecided(measured.interval(), bounds):
        room = limit - len(measured.reference)
        if room <= 0 or clock() - started > max_seconds:
            return measured, False
        one_batch(min(rounds, room))
    return measured, True


def _time_round(model: ort.InferenceSession, names: list[str], feeds: list[dict[str, np.ndarray]]) -> float:
    started = time.perf_counter()
    for feed in feeds:
        model.run(names, feed)
    return time.perf_counter() - started


def latency_ratio(
    reference_path: Path,
    variant_path: Path,
    feeds: list[dict[str, np.ndarray]],
    *,
    rounds: int,
    warmup: int,
    threads: int,
    bounds: Sequence[Bounds] = (),
    max_rounds: int | None = None,
    max_seconds: float = 0.0,
) -> LatencyResult:
    """Time FP32 and the variant in alternating order (ABBA) so drift and load hit both alike."""
    reference = session(reference_path, threads=threads)
    variant = session(variant_path, threads=threads)
    ref_names = [o.name for o in reference.get_outputs()]
    var_names = [o.name for o in variant.get_outputs()]
    for _ in range(warmup):
        _time_round(reference, ref_names, feeds)
        _time_round(variant, var_names, feeds)

    def time_pair(index: int) -> tuple[float, float]:
        if index % 2 == 0:
            ref = _time_round(reference, ref_names, feeds)
            return ref, _time_round(variant, var_names, feeds)
        var = _time_round(variant, var_names, feeds)
        return _time_round(reference, ref_names, feeds), var

    load_before = os.getloadavg()[0]
    measured, decided = measure_rounds(time_pair, rounds=rounds, bounds=bounds, max_rounds=max_rounds, max_seconds=max_seconds)
    ratios = sorted(v / r for v, r in zip(measured.variant, measured.reference))
    quartiles = statistics.quantiles(ratios, n=4)
    ratio, interval = measured.estimate()
    return LatencyResult(
        reference_ms=statistics.median(measured.reference) * 1000,
        variant_ms=statistics.median(measured.variant) * 1000,
        ratio=ratio,
        rounds=len(measured.reference),
        samples=len(feeds),
        threads=threads,
        spread=(quartiles[2] - quartiles[0]) / statistics.median(ratios),
        interval=interval,
        decided=decided,
        extra_rounds=len(measured.reference) - measured.first,
        load=MachineLoad.now(before=load_before),
        interval_level=measured.level,
    )
