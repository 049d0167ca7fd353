"""Size and speed against FP32. Latency is a ratio measured in one process: interleaved rounds, medians."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from quant.model import session


@dataclass(frozen=True)
class LatencyResult:
    reference_ms: float  # median per round (all timed samples) for FP32
    variant_ms: float
    ratio: float
    rounds: int
    samples: int
    threads: int
    spread: float  # (p75 - p25) / median of the per-round ratios: how noisy this measurement was

    def to_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _time_round(model: ort.InferenceSession, names: list[str], feeds: list[dict[str, np.ndarray]]) -> float:
    started = time.perf_counter()
    for feed in feeds:
        model.run(names, feed)
    return time.perf_counter() - started


def latency_ratio(reference_path: Path, variant_path: Path, feeds: list[dict[str, np.ndarray]], *, rounds: int, warmup: int, threads: int) -> LatencyResult:
    """Time FP32 and the variant in alternating order (ABBA) so drift and load hit both alike."""
    reference = session(reference_path, threads=threads)
    variant = session(variant_path, threads=threads)
    ref_names = [o.name for o in reference.get_outputs()]
    var_names = [o.name for o in variant.get_outputs()]
    for _ in range(warmup):
        _time_round(reference, ref_names, feeds)
        _time_round(variant, var_names, feeds)
    ref_times: list[float] = []
    var_times: list[float] = []
    for index in range(rounds):
        if index % 2 == 0:
            ref_times.append(_time_round(reference, ref_names, feeds))
            var_times.append(_time_round(variant, var_names, feeds))
        else:
            var_times.append(_time_round(variant, var_names, feeds))
            ref_times.append(_time_round(reference, ref_names, feeds))
    ratios = sorted(v / r for v, r in zip(var_times, ref_times))
    quartiles = statistics.quantiles(ratios, n=4)
    ref_median = statistics.median(ref_times)
    var_median = statistics.median(var_times)
    return LatencyResult(
        reference_ms=ref_median * 1000,
        variant_ms=var_median * 1000,
        ratio=var_median / ref_median,
        rounds=rounds,
        samples=len(feeds),
        threads=threads,
        spread=(quartiles[2] - quartiles[0]) / statistics.median(ratios),
    )
