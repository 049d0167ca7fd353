"""95 % intervals (Wilson, seeded bootstrap), whether a sample count can support a threshold, and
the latency rule that measures more rounds while the ratio's interval straddles a gate."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from quant.bench import latency_ratio, measure_rounds
from quant.intervals import (
    MIN_BOOTSTRAP_SAMPLES,
    bootstrap_mean,
    bootstrap_ratio,
    rate_interval,
    unsupported_reason,
    wilson,
    wilson_samples_needed,
)
from quant.paired_ratio import hodges_lehmann_ratio


@pytest.mark.parametrize(("successes", "trials"), [(0, 10), (10, 10), (7, 10), (196, 200), (1, 1), (50, 1000)])
def test_wilson_matches_scipy(successes: int, trials: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    expected = stats.binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    interval = wilson(successes, trials)
    assert interval.low == pytest.approx(expected.low, abs=1e-9)
    assert interval.high == pytest.approx(expected.high, abs=1e-9)
    assert interval.samples == trials


def test_wilson_covers_the_true_rate_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    true_rate, trials = 0.95, 60
    draws = rng.binomial(trials, true_rate, size=4000)
    covered = np.mean([wilson(int(k), trials).low <= true_rate <= wilson(int(k), trials).high for k in draws])
    assert 0.93 <= covered <= 0.975


def test_bootstrap_is_seeded_and_brackets_the_point() -> None:
    rng = np.random.default_rng(0)
    edits = rng.poisson(0.3, size=150)
    lengths = rng.integers(5, 30, size=150)
    point = edits.sum() / lengths.sum()
    first = bootstrap_ratio(edits, lengths, seed=7)
    assert first == bootstrap_ratio(edits, lengths, seed=7)
    assert first != bootstrap_ratio(edits, lengths, seed=8)
    assert first.low < point < first.high
    assert first.samples == 150 and first.method == "bootstrap"


def test_bootstrap_agrees_with_scipy_percentile_bootstrap() -> None:
    stats = pytest.importorskip("scipy.stats")
    values = np.random.default_rng(3).normal(0.9, 0.05, size=200)
    ours = bootstrap_mean(values, seed=0)
    theirs = stats.bootstrap((values,), np.mean, confidence_level=0.95, method="percentile", random_state=0).confidence_interval
    assert ours.low == pytest.approx(theirs.low, abs=0.002)
    assert ours.high == pytest.approx(theirs.high, abs=0.002)


def test_bootstrap_keeps_each_samples_parts_together() -> None:
    # Every line has exactly 10 % of its characters wrong: a resampling that kept pairs together
    # can only ever see 10 %; one that split numerators from denominators would wander.
    lengths = np.arange(1, 41) * 10
    interval = bootstrap_ratio(lengths // 10, lengths, seed=0)
    assert interval.low == pytest.approx(0.1) and interval.high == pytest.approx(0.1)


def test_rates_of_grouped_frames_get_the_wider_sample_bootstrap() -> None:
    # 100 lines x 50 frames; whole lines agree or not: 5000 frames are not 5000 independent trials.
    line_agrees = np.random.default_rng(2).random(100) < 0.9
    hits, totals = line_agrees.astype(int) * 50, np.full(100, 50)
    grouped = rate_interval(hits.tolist(), totals.tolist())
    naive = wilson(int(hits.sum()), int(totals.sum()))
    assert grouped.method == "bootstrap" and grouped.samples == 100
    assert grouped.high - grouped.low > 3 * (naive.high - naive.low)
    assert rate_interval([1, 0, 1], [1, 1, 1]) == wilson(2, 3)


def test_sample_count_needed_for_a_rate_threshold_is_the_least_that_can_clear_it() -> None:
    for minimum in (0.9, 0.95, 0.98, 0.99):
        needed = wilson_samples_needed(minimum, None)
        assert wilson(needed, needed).low >= minimum > wilson(needed - 1, needed - 1).low
    needed = wilson_samples_needed(None, 0.05)
    assert wilson(0, needed).high <= 0.05 < wilson(0, needed - 1).high
    assert math.isinf(wilson_samples_needed(1.0, None))


def test_unsupported_reason_names_the_count_needed() -> None:
    assert unsupported_reason("wilson", 200, 0.98, None) is None
    reason = unsupported_reason("wilson", 100, 0.98, None)
    assert reason is not None and "189" in reason
    assert unsupported_reason("bootstrap", MIN_BOOTSTRAP_SAMPLES - 1, None, 0.005) is not None
    assert unsupported_reason("bootstrap", MIN_BOOTSTRAP_SAMPLES, None, 0.005) is None


def _noisy_rounds(ratio: float, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)

    def time_pair(index: int) -> tuple[float, float]:
        reference = 0.010 * (1 + rng.normal(0, noise))
        return reference, 0.010 * ratio * (1 + rng.normal(0, noise))

    return time_pair


def test_a_clear_ratio_needs_no_extra_rounds() -> None:
    measured, decided = measure_rounds(_noisy_rounds(0.6, 0.02), rounds=9, bounds=[(None, 0.9)], max_rounds=90, max_seconds=60)
    assert decided and len(measured.reference) == 9
    assert measured.interval().high < 0.9


def test_a_straddling_ratio_gets_more_rounds_until_it_is_decided() -> None:
    time_pair = _noisy_rounds(0.85, 0.15)
    first, _ = measure_rounds(_noisy_rounds(0.85, 0.15), rounds=9, bounds=[], max_rounds=9)
    assert first.interval().straddles(None, 0.9)  # 9 rounds cannot tell 0.85 from 0.9 at this noise
    measured, decided = measure_rounds(time_pair, rounds=9, bounds=[(None, 0.9)], max_rounds=900, max_seconds=600)
    assert decided and len(measured.reference) > 9
    assert measured.interval().clears(None, 0.9)


def test_a_ratio_on_the_threshold_stays_undecided_within_the_budget() -> None:
    measured, decided = measure_rounds(_noisy_rounds(0.9, 0.15), rounds=9, bounds=[(None, 0.9)], max_rounds=27, max_seconds=600)
    assert not decided and len(measured.reference) == 27
    assert measured.interval().straddles(None, 0.9)


def test_the_time_budget_stops_extra_rounds() -> None:
    ticks = iter(range(1000))
    measured, decided = measure_rounds(
        _noisy_rounds(0.9, 0.15), rounds=10, bounds=[(None, 0.9)], max_rounds=500, max_seconds=2, clock=lambda: float(next(ticks))
    )
    assert not decided and len(measured.reference) <= 3 * measured.first < 500


def test_ratio_interval_keeps_rounds_as_pairs() -> None:
    # Load that slows both models alike in some rounds must not widen the ratio's interval.
    reference = np.array([10.0, 10.0, 30.0, 10.0, 30.0, 10.0, 30.0, 10.0])
    _, interval = hodges_lehmann_ratio(reference, reference * 0.7)
    assert interval.low == pytest.approx(0.7) and interval.high == pytest.approx(0.7)


def test_latency_records_interval_rounds_and_machine_load(tmp_path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    feeds = [{"x": np.ones((1, 64), np.float32)}]
    result = latency_ratio(path, path, feeds, rounds=5, warmup=1, threads=1)
    # 5 rounds cannot give a 95 % signed-rank interval (2^-5 > 2.5 %): the first look takes the 6 that can
    assert result.rounds == 6 and result.extra_rounds == 0 and result.decided
    assert result.interval is not None and result.interval.samples == 6 and result.interval_level == 0.95
    assert result.load is not None and result.load.cpus >= 1 and result.load.load_before >= 0
    assert set(result.to_dict()["load"]) == {"cpus", "load_1m_before", "load_1m_after"}
