"""Latency of a variant family vs FP32: per image (encoder + whole greedy generation) and per generated token.

One round = every image generated with one family; FP32 and the variant alternate (ABBA, as quant.bench
times single models) and quant.bench.measure_rounds adds rounds while the ratio's interval straddles a
gate's threshold. Greedy generation is deterministic, so each family generates the same number of tokens
in every round: the per-token ratio is the per-image ratio times (FP32's tokens / the variant's), and its
interval is the per-image interval scaled by the same constant. A variant that loops to max_new_tokens is
slower per image but not per token; both are reported.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant.bench import Bounds, MachineLoad, measure_rounds
from quant.intervals import Interval
from quant.seq2seq.family import open_sessions
from quant.seq2seq.generate import Family, Feeds, GenerationConfig, generate


@dataclass(frozen=True)
class FamilyLatency:
    reference_ms_per_image: float  # medians over rounds
    variant_ms_per_image: float
    reference_ms_per_token: float
    variant_ms_per_token: float
    image_ratio: float  # paired per round (Hodges-Lehmann of the per-round ratios), not a ratio of the medians
    token_ratio: float
    image_interval: Interval
    token_interval: Interval
    reference_tokens: int  # tokens (end tokens included: each is a decoder step) per round
    variant_tokens: int
    images: int
    rounds: int
    decided: bool  # False: an interval still straddled a latency gate's threshold when the budget ran out
    load: MachineLoad

    def metrics(self) -> dict[str, float]:
        return {"image_latency_ratio": self.image_ratio, "token_latency_ratio": self.token_ratio}

    def intervals(self) -> dict[str, Interval]:
        return {"image_latency_ratio": self.image_interval, "token_latency_ratio": self.token_interval}

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
        data["image_interval"] = self.image_interval.to_dict()
        data["token_interval"] = self.token_interval.to_dict()
        data["load"] = self.load.to_dict()
        return data


def _generate_all(family: Family, images: Sequence[Feeds], config: GenerationConfig) -> tuple[float, int]:
    """Seconds to generate every image, and the decoder steps taken (one per generated token, end token included)."""
    started = time.perf_counter()
    steps = sum(len(generate(family, feeds, config).step_logits) for feeds in images)
    return time.perf_counter() - started, steps


def family_latency_of(
    reference_paths: dict[str, Path], variant_paths: dict[str, Path], threads: int, images: Sequence[Feeds], config: GenerationConfig, **settings: Any
) -> FamilyLatency:
    """family_latency as a benchmark unit (`Executor.alone`: nothing else running, on the bench node with Ray): both
    families' sessions are opened where it runs, from their part files (by role)."""
    return family_latency(open_sessions(reference_paths, threads), open_sessions(variant_paths, threads), images, config, **settings)


def _scaled(interval: Interval, factor: float) -> Interval:
    return Interval(interval.low * factor, interval.high * factor, interval.samples, interval.method)


def family_latency(
    reference: Family,
    variant: Family,
    images: Sequence[Feeds],
    config: GenerationConfig,
    *,
    rounds: int,
    warmup: int = 1,
    image_bounds: Sequence[Bounds] = (),
    token_bounds: Sequence[Bounds] = (),
    max_rounds: int | None = None,
    max_seconds: float = 0.0,
) -> FamilyLatency:
    """Interleaved latency of `variant` vs `reference` over `images` (threads are the sessions' own).

    `image_bounds` / `token_bounds`: thresholds of image_latency_ratio / token_latency_ratio gates
    (quant.gates.latency_bounds); more rounds are measured while the interval straddles one."""
    if not images:
        raise ValueError("family_latency needs at least one image")
    reference_steps = variant_steps = 0
    for _ in range(max(warmup, 1)):  # at least one untimed pass: it also counts each family's tokens
        _, reference_steps = _generate_all(reference, images, config)
        _, variant_steps = _generate_all(variant, images, config)
    per_token = reference_steps / variant_steps if variant_steps else float("nan")
    # A bound on the per-token ratio is a bound on the per-image ratio divided by the constant factor.
    bounds = [*image_bounds, *((None if low is None else low / per_token, None if high is None else high / per_token) for low, high in token_bounds)]

    def time_pair(index: int) -> tuple[float, float]:
        if index % 2 == 0:
            ref = _generate_all(reference, images, config)[0]
            return ref, _generate_all(variant, images, config)[0]
        var = _generate_all(variant, images, config)[0]
        return _generate_all(reference, images, config)[0], var

    load_before = os.getloadavg()[0]
    measured, decided = measure_rounds(time_pair, rounds=rounds, bounds=bounds, max_rounds=max_rounds, max_seconds=max_seconds)
    image_ratio, interval = measured.estimate()  # paired per round (quant.paired_ratio); the ms figures are medians
    ref_median, var_median = statistics.median(measured.reference), statistics.median(measured.variant)
    return FamilyLatency(
        reference_ms_per_image=ref_median * 1000 / len(images),
        variant_ms_per_image=var_median * 1000 / len(images),
        reference_ms_per_token=ref_median * 1000 / reference_steps,
        variant_ms_per_token=var_median * 1000 / variant_steps,
        image_ratio=image_ratio,
        token_ratio=image_ratio * per_token,
        image_interval=interval,
        token_interval=_scaled(interval, per_token),
        reference_tokens=reference_steps,
        variant_tokens=variant_steps,
        images=len(images),
        rounds=len(measured.reference),
        decided=decided,
        load=MachineLoad.now(before=load_before),
    )
