"""Metrics computed from known inputs: the numbers a gate reads are the numbers the definitions give,
accumulated over samples of different sizes, and the worst case scores worst."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from quant.compare import OutputComparison, binary_iou
from quant.gates import regression
from quant.metrics.catalogue import CATALOGUE, worst
from quant.metrics.ctc import confidence_margins, greedy_decode
from quant.metrics.numeric import SNR_CAP_DB, cosine, snr_db, top1_agreement
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


def test_identical_outputs_score_the_snr_the_metric_reference_states() -> None:
    """JSON has no infinity: identical outputs report the cap docs/recipes.md names, above what the smallest float32
    difference scores (one unit in the last place of every value: about 141 dB here)."""
    stated = float(re.search(r"identical outputs: (\d+)", CATALOGUE["snr_db"].doc)[1])  # type: ignore[index]
    reference = np.linspace(0.5, 1.5, 64, dtype=np.float32)
    assert snr_db(reference, reference.copy()) == stated
    assert snr_db(reference, np.nextafter(reference, np.float32(2))) < stated


def test_a_nan_score_is_never_the_variants_top_class() -> None:
    """NaN is no answer: a NaN where FP32 has its top class is a disagreement, and a NaN elsewhere does not take the top."""
    reference = np.array([[0.1, 0.7, 0.2], [0.2, 0.1, 0.7], [0.6, 0.3, 0.1]], np.float32)
    candidate = reference.copy()
    candidate[0, 1] = candidate[1, 2] = np.nan  # on FP32's top class: the variant's top is another class
    candidate[2, 2] = np.nan  # elsewhere: the variant's top is still FP32's
    assert top1_agreement(reference, candidate, axis=-1) == (1, 3)


@pytest.mark.parametrize("threshold", [0.3, -0.5])
@pytest.mark.parametrize("where_fp32_says", ["foreground", "background"])
def test_a_nan_pixel_of_a_probability_map_never_agrees_with_fp32(where_fp32_says: str, threshold: float) -> None:
    """A NaN is no answer: it lowers the IoU whether FP32 has foreground or background there, whatever the threshold."""
    reference = np.where(np.arange(16).reshape(1, 1, 4, 4) < 8, 0.9, -0.9).astype(np.float32)  # top half foreground
    candidate = reference.copy()
    candidate.flat[0 if where_fp32_says == "foreground" else 15] = np.nan
    assert binary_iou(reference, reference.copy(), threshold) == 1.0
    # 8 foreground pixels: a NaN on one leaves 7 of 8 agreeing; a NaN on background adds a 9th pixel to the union.
    assert binary_iou(reference, candidate, threshold) == pytest.approx(7 / 8 if where_fp32_says == "foreground" else 8 / 9)


@pytest.mark.parametrize(("reference_shape", "candidate_shape"), [((2, 3), (2, 1)), ((2, 1), (2, 3)), ((6,), (2, 3))])
def test_an_output_of_another_shape_is_infinitely_far_from_fp32(reference_shape: tuple[int, ...], candidate_shape: tuple[int, ...]) -> None:
    """Never broadcast against FP32's output: a variant that changed an output's shape is broken, whichever way."""
    comparison = OutputComparison(OutputSpec())
    comparison.add("a", np.ones(reference_shape, np.float32), np.ones(candidate_shape, np.float32))
    summary = comparison.summary()
    assert (summary["max_abs"], summary["mean_abs"]) == (math.inf, math.inf)


def test_an_all_zero_fp32_output_gives_the_worst_snr_to_any_difference() -> None:
    zeros = np.zeros(3, np.float32)
    assert snr_db(zeros, np.ones(3, np.float32)) == -SNR_CAP_DB and snr_db(zeros, zeros.copy()) == SNR_CAP_DB


def test_cosine_of_all_zero_outputs() -> None:
    zeros = np.zeros(3, np.float32)
    assert cosine(zeros, zeros.copy()) == 1.0 and cosine(zeros, np.ones(3, np.float32)) == 0.0


def test_greedy_decoding_of_a_single_unbatched_sequence() -> None:
    assert greedy_decode(_frames([1, 1, 0, 2])[0]) == [(1, 2)]  # [frames, classes]: one sequence, not one per frame


def test_confidence_margin_is_the_smallest_gap_between_the_best_two_classes() -> None:
    frames = np.array([[[0.9, 0.05, 0.05], [0.5, 0.4, 0.1]]], np.float32)
    assert confidence_margins(frames) == [pytest.approx(0.1)]
    assert confidence_margins(frames[0]) == [pytest.approx(0.1)]  # unbatched: still one line
    with_nan = np.array([[[0.9, np.nan, 0.1]]], np.float32)
    assert confidence_margins(with_nan) == [pytest.approx(0.8)]  # a NaN class is never the best
    log_probabilities = np.array([[[-0.1, np.nan, -2.5]]], np.float32)
    assert confidence_margins(log_probabilities) == [pytest.approx(2.4)]  # nor the second best, whatever the scale
    assert confidence_margins(np.array([[[0.7, 0.3], [0.2, 0.8]]], np.float32)) == [pytest.approx(0.4)]  # blank and one character
    assert confidence_margins(np.zeros((2, 0, 5), np.float32)) == [1.0, 1.0]  # no frames: nothing unsure
    assert confidence_margins(np.ones((1, 3, 1), np.float32)) == [1.0]  # one class: nothing to confuse


def test_ctc_rates_on_short_lines_and_by_confidence() -> None:
    comparison = OutputComparison(OutputSpec(kind="ctc", confident_margin=0.5))
    comparison.add("sure", _frames([1, 0, 2]), _frames([1, 0, 2]))  # margin 0.94, same text
    unsure = _frames([3])
    unsure[0, 0, 4] = 0.9  # FP32 nearly read 4
    comparison.add("unsure", unsure, _frames([4]))  # one character, wrong
    summary = comparison.summary()
    assert summary["ctc_exact_match_confident"] == 1.0 and summary["ctc_exact_match_unsure"] == 0.0
    assert summary["ctc_exact_match"] == 0.5 and summary["ctc_cer"] == pytest.approx(1 / 3)  # 0 + 1 edits over 2 + 1 characters
    assert summary["max_abs"] == pytest.approx(0.94)


def test_a_metric_is_better_towards_its_perfect_value() -> None:
    for metric in CATALOGUE.values():
        if metric.perfect is None:
            continue
        assert metric.lower_is_better is (metric.perfect == 0.0), metric.name
        away = metric.perfect + (0.1 if metric.lower_is_better else -0.1)
        assert regression(metric.name, previous=metric.perfect, current=away) > 0, metric.name


# The direction of each metric without a perfect value, from what it means (not read from the catalogue): error
# rates, unfinished generations and cost ratios to FP32 are worse higher; SNR, agreement with the labels and how
# late generation leaves FP32's tokens are better higher.
WORSE_HIGHER = {"label_cer", "label_cer_reference", "seq_label_cer", "seq_label_cer_reference", "seq_unfinished"}
WORSE_HIGHER |= {"size_ratio", "latency_ratio", "image_latency_ratio", "token_latency_ratio"}
BETTER_HIGHER = {"snr_db", "snr_db_min", "label_exact_match", "first_divergence_median"}


def test_a_metric_without_a_perfect_value_is_better_in_the_direction_it_means() -> None:
    without = {m.name for m in CATALOGUE.values() if m.perfect is None}
    assert without == WORSE_HIGHER | BETTER_HIGHER  # a new metric is classified here, by what it means
    for name in sorted(without):
        got_worse = regression(name, previous=0.5, current=0.8) > 0
        assert got_worse is (name in WORSE_HIGHER) and (worst(name, [0.5, 0.8]) == 0.8) is got_worse, name
