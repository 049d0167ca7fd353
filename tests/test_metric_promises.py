"""Metrics computed from known inputs: the numbers a gate reads are the numbers the definitions give,
accumulated over samples of different sizes, and the worst case scores worst."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quant.compare import OutputComparison
from quant.metrics.ctc import greedy_decode
from quant.recipe.schema import OutputSpec


def _frames(labels: list[int], classes: int = 6) -> np.ndarray:
    probabilities = np.full((1, len(labels), classes), 0.01, np.float32)
    probabilities[0, np.arange(len(labels)), labels] = 0.95
    return probabilities


def test_greedy_decoding_keeps_every_change_of_label_in_either_direction() -> None:
    assert greedy_decode(_frames([3, 2, 1, 1, 2])) == [(3, 2, 1, 2)]  # falling labels are changes too
    assert greedy_decode(_frames([1, 0, 1, 1, 0, 0, 5])) == [(1, 1, 5)]  # a blank separates a repeated character
    batch = np.concatenate([_frames([2, 2, 4]), _frames([0, 3, 3])])
    assert greedy_decode(batch) == [(2, 4), (3,)]
    assert greedy_decode(_frames([1, 2]).transpose(0, 2, 1), axis=1) == [(1, 2)]  # classes on another axis
    assert greedy_decode(_frames([4, 4]), blank=4) == [()]


def test_numeric_metrics_accumulate_over_samples_of_different_sizes() -> None:
    comparison = OutputComparison(OutputSpec())
    small_ref = np.array([1.0, 2.0], np.float32)
    comparison.add("a", small_ref, small_ref + np.array([1.0, 1.0], np.float32))  # |error| 1 on 2 values
    large_ref = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    comparison.add("b", large_ref, large_ref.copy())  # exact on 4 values
    summary = comparison.summary()
    assert summary["mean_abs"] == pytest.approx(2 / 6)  # per value, not per sample: (1 + 1 + 0 * 4) / 6
    assert summary["max_abs"] == pytest.approx(1.0)
    # cosine of sample a: [1, 2] . [2, 3] / (||[1, 2]|| ||[2, 3]||); sample b is exact.
    assert summary["cosine_min"] == pytest.approx(8 / math.sqrt(5 * 13)) and summary["cosine"] == pytest.approx((8 / math.sqrt(65) + 1) / 2)
    assert summary["snr_db_min"] < summary["snr_db"] and summary["nonfinite"] == 0.0
    assert comparison.distributions()["cosine"][1] == 1.0


def test_non_finite_values_are_counted() -> None:
    comparison = OutputComparison(OutputSpec())
    comparison.add("a", np.ones(4, np.float32), np.array([1.0, np.nan, np.inf, 1.0], np.float32))
    assert comparison.summary()["nonfinite"] == 2.0


def test_a_probability_map_of_another_shape_has_no_overlap() -> None:
    comparison = OutputComparison(OutputSpec(kind="prob_map", threshold=0.3))
    same = np.full((1, 1, 4, 4), 0.9, np.float32)
    comparison.add("same", same, same.copy())
    comparison.add("other", same, np.full((1, 1, 4, 5), 0.9, np.float32))
    summary = comparison.summary()
    assert summary["map_iou_min"] == 0.0 and summary["map_iou"] == pytest.approx(0.5)
    assert comparison.distributions()["map_iou"] == [1.0, 0.0]
