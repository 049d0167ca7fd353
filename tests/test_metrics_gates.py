"""Metrics against FP32 and the gates that read them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from quant.charset import output_charsets
from quant.compare import OutputComparison, binary_iou
from quant.errors import ModelError
from quant.gates import effective_gates, judge
from quant.metrics.ctc import edit_distance, greedy_decode, to_text
from quant.metrics.numeric import SNR_CAP_DB, abs_errors, cosine, nonfinite_count, snr_db, top1_agreement
from quant.recipe.schema import Gate, OutputSpec


def test_cosine_and_snr_separate_small_from_large_errors() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=1000).astype(np.float32)
    close = reference + rng.normal(scale=0.01, size=1000).astype(np.float32)
    far = reference + rng.normal(scale=1.0, size=1000).astype(np.float32)
    assert cosine(reference, reference) == pytest.approx(1.0)
    assert cosine(reference, close) > 0.999 > cosine(reference, far)
    assert snr_db(reference, close) == pytest.approx(40, abs=1.5)
    assert snr_db(reference, far) == pytest.approx(0, abs=1.5)
    assert snr_db(reference, reference) == SNR_CAP_DB


def test_non_finite_outputs_score_worst() -> None:
    reference = np.ones(4, np.float32)
    broken = np.array([1, np.nan, np.inf, 1], np.float32)
    assert cosine(reference, broken) == 0.0
    assert snr_db(reference, broken) == -SNR_CAP_DB
    assert nonfinite_count(reference, broken) == 2
    assert abs_errors(reference, broken) == (math.inf, math.inf)


def test_abs_errors_and_top1() -> None:
    reference = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.4]], np.float32)
    candidate = np.array([[0.2, 0.8], [0.3, 0.7], [0.5, 0.4]], np.float32)
    peak, mean = abs_errors(reference, candidate)
    assert peak == pytest.approx(0.5) and mean == pytest.approx((0.1 * 2 + 0.5 * 2) / 6)
    assert top1_agreement(reference, candidate, axis=-1) == (2, 3)


def one_hot(frames: list[int], classes: int = 6) -> np.ndarray:
    probabilities = np.full((1, len(frames), classes), 0.01, np.float32)
    for t, c in enumerate(frames):
        probabilities[0, t, c] = 0.95
    return probabilities


def test_greedy_ctc_collapses_repeats_and_drops_blanks() -> None:
    assert greedy_decode(one_hot([0, 1, 1, 0, 1, 2, 2, 0])) == [(1, 1, 2)]


def test_edit_distance() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance((1, 2, 3), (1, 2, 3)) == 0
    assert edit_distance((), (4, 5)) == 2
    # Either order, deletions at the start and the end included (textbook values).
    for first, second, distance in [((4, 5), (), 2), ("ab", "b", 1), ("abc", "ac", 1), ("sitting", "kitten", 3), ("flaw", "lawn", 2)]:
        assert edit_distance(first, second) == edit_distance(second, first) == distance, (first, second)


def test_charset_follows_paddle_layout() -> None:
    outputs = {
        "p": OutputSpec(kind="ctc", charset_metadata="character"),
        "q": OutputSpec(kind="ctc", charset_metadata="character", use_space_char=False),
    }
    charsets = output_charsets(outputs, {"character": "a\nb"}, Path("."))
    assert charsets["p"].characters == ["<blank>", "a", "b", " "] and charsets["q"].characters == ["<blank>", "a", "b"]
    assert to_text((1, 3, 2), charsets["p"].characters) == "a b"
    with pytest.raises(ModelError, match="no metadata key 'character'"):
        output_charsets(outputs, {}, Path("."))


def test_ctc_comparison_counts_exact_matches_cer_and_label_cer() -> None:
    comparison = OutputComparison(OutputSpec(kind="ctc", charset_metadata="character"), charset=["<blank>", *"abcde", " "])
    comparison.add("same", one_hot([1, 0, 2]), one_hot([1, 0, 2]), label="ab")
    comparison.add("diff", one_hot([1, 0, 2, 3]), one_hot([1, 0, 2, 4]), label="abc")
    summary = comparison.summary()
    assert summary["ctc_exact_match"] == 0.5
    assert summary["ctc_cer"] == pytest.approx(1 / 5)  # one substitution over 2 + 3 reference tokens
    assert summary["label_cer_reference"] == 0.0
    assert summary["label_cer"] == pytest.approx(1 / 5)
    assert summary["label_cer_delta"] == pytest.approx(1 / 5)
    assert comparison.mismatches == [{"sample": "diff", "fp32": "abc", "variant": "abd"}]


def test_binary_iou() -> None:
    reference = np.zeros((1, 1, 4, 4), np.float32)
    reference[..., :2, :] = 0.9
    candidate = np.zeros_like(reference)
    candidate[..., :1, :] = 0.9
    assert binary_iou(reference, candidate, 0.3) == pytest.approx(0.5)
    assert binary_iou(np.zeros(4), np.zeros(4), 0.3) == 1.0


def test_gate_bounds_and_worst_output_decides() -> None:
    specs = {"a": OutputSpec(), "b": OutputSpec()}
    metrics = {"a": {"cosine": 0.999}, "b": {"cosine": 0.95}}
    low = judge(Gate(metric="cosine", min=0.99), metrics, {}, specs)
    assert not low.passed and low.output == "b" and low.observed == 0.95
    assert judge(Gate(metric="cosine", min=0.99, output="a"), metrics, {}, specs).passed
    assert judge(Gate(metric="latency_ratio", max=0.9), metrics, {"latency_ratio": 0.85}, specs).passed
    assert not judge(Gate(metric="latency_ratio", max=0.9), metrics, {"latency_ratio": 0.91}, specs).passed


def test_gate_fails_on_nan_and_on_missing_metric() -> None:
    specs = {"a": OutputSpec()}
    assert not judge(Gate(metric="cosine", min=0.0), {"a": {"cosine": math.nan}}, {}, specs).passed
    missing = judge(Gate(metric="ctc_exact_match", min=0.9), {"a": {"cosine": 1.0}}, {}, specs)
    assert not missing.passed and missing.observed is None and "not available" in missing.reason


def test_variant_gates_override_recipe_gates_with_same_metric_and_output() -> None:
    recipe = [Gate(metric="latency_ratio", max=0.9), Gate(metric="cosine", min=0.99)]
    variant = [Gate(metric="latency_ratio", max=1.05)]
    gates = effective_gates(recipe, variant)
    assert [(g.metric, g.max, g.min) for g in gates] == [("cosine", None, 0.99), ("latency_ratio", 1.05, None)]


def test_a_variant_output_of_another_shape_scores_worst() -> None:
    reference = np.ones((1, 4, 3), np.float32)
    candidate = np.ones((1, 5, 3), np.float32)
    assert cosine(reference, candidate) == 0.0
    assert snr_db(reference, candidate) == -SNR_CAP_DB
    assert abs_errors(reference, candidate) == (math.inf, math.inf)
    assert nonfinite_count(reference, candidate) == candidate.size


def test_normalised_ctc_metrics_ignore_the_declared_characters() -> None:
    charset = ["<blank>", *"abcde", " "]
    comparison = OutputComparison(OutputSpec(kind="ctc", charset_metadata="character", ignore_chars=[" "]), charset=charset)
    comparison.add("space only", one_hot([1, 0, 6, 0, 2], classes=7), one_hot([1, 0, 0, 0, 2], classes=7))
    comparison.add("real change", one_hot([1, 0, 2], classes=7), one_hot([1, 0, 3], classes=7))
    summary = comparison.summary()
    assert summary["ctc_exact_match"] == 0.0
    assert summary["ctc_exact_match_norm"] == 0.5
    assert summary["ctc_cer_norm"] == pytest.approx(1 / 4)
    plain = OutputComparison(OutputSpec(kind="ctc"), charset=None)
    plain.add("s", one_hot([1, 2]), one_hot([1, 2]))
    assert "ctc_exact_match_norm" not in plain.summary()


def test_nfkc_normalisation_equates_full_and_half_width_punctuation() -> None:
    charset = ["<blank>", "a", "：", ":", " "]
    spec = OutputSpec(kind="ctc", charset_metadata="character", normalize="NFKC", ignore_chars=[" "])
    comparison = OutputComparison(spec, charset=charset)
    comparison.add("width", one_hot([1, 0, 2], classes=5), one_hot([1, 0, 3], classes=5))
    summary = comparison.summary()
    assert summary["ctc_exact_match"] == 0.0 and summary["ctc_exact_match_norm"] == 1.0
