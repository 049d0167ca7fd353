"""The paired latency ratio (Hodges-Lehmann of the per-round ratios, signed-rank interval) under a machine whose
load comes and goes: it covers the true ratio, is far narrower than a ratio of medians, stays undecided on
the threshold and decides a clear case in the first look."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from quant.bench import measure_rounds
from quant.intervals import paired_statistic_interval
from quant.paired_ratio import (
    hodges_lehmann_ratio,
    level_per_look,
    median_ratio,
    min_rounds,
    sign_test_depth,
    signed_rank_depth,
)


def drifting_rounds(ratio: float, seed: int, base: float = 0.1):
    """A round pair on a shared machine: other jobs come and go (the load multiplies both halves of a round
    alike, 1x to 4x), the load moves a little between the round's halves (ABBA: which half is first alternates),
    plus each run's own jitter. The true latency ratio is `ratio`."""
    rng = np.random.default_rng(seed)

    def time_pair(index: int) -> tuple[float, float]:
        load = math.exp(rng.uniform(0, math.log(4)))
        later = load * math.exp(rng.normal(0, 0.05))
        ref_load, var_load = (load, later) if index % 2 == 0 else (later, load)
        return base * ref_load * math.exp(rng.normal(0, 0.03)), base * ratio * var_load * math.exp(rng.normal(0, 0.03))

    return time_pair


def _rounds(ratio: float, seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    time_pair = drifting_rounds(ratio, seed)
    pairs = np.array([time_pair(i) for i in range(count)])
    return pairs[:, 0], pairs[:, 1]


@pytest.mark.parametrize("n", [6, 7, 10, 12])
def test_signed_rank_depth_is_the_exact_tail_of_the_enumerated_null(n: int) -> None:
    sums = np.array([sum(r for r, s in zip(range(1, n + 1), signs) if s) for signs in itertools.product((0, 1), repeat=n)])
    depth = signed_rank_depth(n)
    assert np.mean(sums <= depth - 1) <= 0.025 < np.mean(sums <= depth)


def test_too_few_rounds_give_no_interval_rather_than_a_false_one() -> None:
    assert signed_rank_depth(5) == 0 and sign_test_depth(5) == 0 and min_rounds() == 6
    _, interval = hodges_lehmann_ratio([1.0] * 5, [0.9] * 5)
    assert math.isnan(interval.low) and interval.straddles(None, 1.05)  # undecided against any bound
    assert min_rounds(level_per_look(4)) == 8 and signed_rank_depth(8, level_per_look(4)) == 1


def test_under_drifting_load_the_paired_interval_covers_the_truth_and_is_far_narrower() -> None:
    covered, paired_widths, median_widths = 0, [], []
    for seed in range(200):
        reference, variant = _rounds(0.95, seed, 15)
        _, interval = hodges_lehmann_ratio(reference, variant)
        covered += interval.low <= 0.95 <= interval.high
        paired_widths.append(interval.high - interval.low)
        old = paired_statistic_interval(reference, variant, lambda r, v: np.median(v, axis=-1) / np.median(r, axis=-1))
        median_widths.append(old.high - old.low)
    assert covered >= 0.93 * 200  # a 95 % interval (binomial slack for 200 draws)
    assert np.median(paired_widths) * 2 < np.median(median_widths)


def test_the_sign_test_interval_covers_without_assuming_symmetry() -> None:
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(300):
        reference = rng.uniform(1, 5, 15)
        variant = reference * 0.9 * np.exp(rng.exponential(0.1, 15) - 0.1 * math.log(2))  # skewed; median ratio 0.9
        covered += median_ratio(reference, variant)[1].low <= 0.9 <= median_ratio(reference, variant)[1].high
    assert covered >= 0.93 * 300


def test_a_true_ratio_on_the_threshold_stays_undecided() -> None:
    # Stopping at the first look that clears would decide ~10 % of these with plain 95 % intervals per look.
    outcomes = [measure_rounds(drifting_rounds(1.05, seed), rounds=15, bounds=[(None, 1.05)], max_rounds=60, max_seconds=600) for seed in range(60)]
    decided = [m for m, d in outcomes if d]
    assert len(decided) <= 3
    assert all(len(m.reference) == 60 for m, d in outcomes if not d)
    assert outcomes[0][0].level == pytest.approx(1 - 0.05 / 4) and outcomes[0][0].first == 15


def test_a_clearly_faster_variant_is_decided_in_the_first_look_despite_the_load() -> None:
    for seed in range(20):
        measured, decided = measure_rounds(drifting_rounds(0.95, seed), rounds=15, bounds=[(None, 1.05)], max_rounds=60, max_seconds=600)
        ratio, interval = measured.estimate()
        assert decided and len(measured.reference) == 15 and interval.high <= 1.05, seed
        assert interval.low <= ratio <= interval.high


def test_a_clearly_slower_variant_fails_in_the_first_look() -> None:
    measured, decided = measure_rounds(drifting_rounds(1.2, 0), rounds=15, bounds=[(None, 1.05)], max_rounds=60, max_seconds=600)
    assert decided and len(measured.reference) == 15 and measured.interval().misses(None, 1.05)
