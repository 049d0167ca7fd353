"""The metric catalogue is the truth about metrics: what compare computes, what gates accept, which way is better."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest

from quant.compare import OutputComparison
from quant.gates import applicable_outputs, judge, latency_bounds
from quant.intervals import Interval
from quant.metrics.catalogue import CATALOGUE, HEADLINE_METRICS, OUTPUT_KINDS, VARIANT_METRICS, accuracy_axis, kind_metrics, worst
from quant.metrics.samples import estimates
from quant.recipe.schema import Gate, OutputSpec

CHARSET = ["blank", "a", "b", "c", " ", "d"]


def _spec(kind: str) -> OutputSpec:
    if kind == "ctc":
        return OutputSpec(kind="ctc", charset_metadata="character", normalize="NFKC", ignore_chars=[" "])
    return OutputSpec(kind=kind)


def _samples(kind: str) -> list[tuple[str, np.ndarray, np.ndarray, str | None]]:
    """A few samples of an output of `kind`: (id, FP32's output, a variant's, label), with sure and unsure lines."""
    rng = np.random.default_rng(1)
    samples = []
    for index in range(4):
        reference = rng.random((1, 5, 6), dtype=np.float32)
        if index % 2:  # one sure line, one unsure line
            reference[0, :, 1] = 5.0
        reference = reference / reference.sum(axis=-1, keepdims=True)
        candidate = reference + rng.normal(scale=0.05, size=reference.shape).astype(np.float32)
        samples.append((f"s{index}", reference, candidate, "ab" if kind == "ctc" else None))
    return samples


def _comparison(kind: str) -> OutputComparison:
    """An output of `kind` compared on a few samples (with labels, normalisation, sure and unsure lines)."""
    comparison = OutputComparison(_spec(kind), CHARSET if kind == "ctc" else None)
    for sample_id, reference, candidate, label in _samples(kind):
        comparison.add(sample_id, reference, candidate, label=label)
    return comparison


def test_the_schema_and_the_catalogue_name_the_same_output_kinds() -> None:
    schema_kinds = typing.get_args(OutputSpec.model_fields["kind"].annotation)
    assert set(schema_kinds) == set(OUTPUT_KINDS)


@pytest.mark.parametrize("kind", OUTPUT_KINDS)
def test_what_compare_computes_is_what_the_catalogue_says(kind: str) -> None:
    assert set(_comparison(kind).summary()) == set(kind_metrics(kind))


@pytest.mark.parametrize("kind", OUTPUT_KINDS)
def test_a_variant_equal_to_fp32_scores_the_perfect_value_of_each_metric(kind: str) -> None:
    comparison = OutputComparison(_spec(kind), CHARSET if kind == "ctc" else None)
    for sample_id, reference, _, label in _samples(kind):
        comparison.add(sample_id, reference, reference.copy(), label=label)
    summary = comparison.summary()
    perfect = {name: CATALOGUE[name].perfect for name in summary if CATALOGUE[name].perfect is not None}
    assert perfect and {name: summary[name] for name in perfect} == pytest.approx(perfect)


def test_every_interval_metric_gets_an_interval_and_no_other() -> None:
    assert set(estimates(_comparison("ctc").rows)) == {m for m in kind_metrics("ctc") if CATALOGUE[m].interval}


def test_worst_follows_the_direction_and_nan_is_worst() -> None:
    assert worst("ctc_cer", [0.1, 0.3, 0.2]) == 0.3
    assert worst("cosine", [0.99, 0.9, 0.95]) == 0.9
    assert math.isnan(worst("cosine", [0.99, math.nan]))
    assert worst("cosine", [None]) is None


def test_a_gate_without_a_bound_direction_reads_the_worst_output() -> None:
    gate = Gate(metric="ctc_cer", max_regression=1.0)
    result = judge(gate, {"a": {"ctc_cer": 0.1}, "b": {"ctc_cer": 0.4}}, {}, {"a": _spec("ctc"), "b": _spec("ctc")})
    assert (result.output, result.observed) == ("b", 0.4)


def test_applicable_outputs_follow_the_kinds() -> None:
    specs = {"map": OutputSpec(kind="prob_map"), "text": _spec("ctc")}
    assert applicable_outputs(Gate(metric="map_iou", min=0.9), specs, ["map", "text"]) == ["map"]
    assert applicable_outputs(Gate(metric="cosine", min=0.9), specs, ["map", "text"]) == ["map", "text"]
    assert all(not CATALOGUE[m].kinds for m in VARIANT_METRICS)


def test_headline_order_and_the_report_axis() -> None:
    assert HEADLINE_METRICS[:4] == ("ctc_exact_match_norm", "ctc_exact_match", "label_cer_delta", "ctc_cer")
    assert accuracy_axis(["cosine", "ctc_cer", "ctc_exact_match"]) == "ctc_exact_match"  # a CER is not plotted at FP32 = 1
    assert accuracy_axis(["snr_db", "cosine", "map_iou"]) == "map_iou"
    assert accuracy_axis(["snr_db"]) is None


def test_the_headline_ranks_are_places_1_to_n() -> None:
    """A rank is the metric's place in the headline: no tie (the order would then hang on where an entry sits in the
    catalogue) and no gap."""
    ranks = sorted(m.headline for m in CATALOGUE.values() if m.headline is not None)
    assert ranks == list(range(1, len(HEADLINE_METRICS) + 1))


def test_an_unknown_metric_is_refused_by_the_gate_schema() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        Gate(metric="label_cer_reference", max=1.0)  # reported beside label_cer, not a gate of its own


def test_label_exact_match_counts_lines_read_exactly_as_labelled_and_can_be_gated() -> None:
    """The metric added with the catalogue: only the catalogue and compare know it, and gates, intervals and docs follow."""
    comparison = OutputComparison(_spec("ctc"), CHARSET)
    reads_ab = np.eye(6, dtype=np.float32)[None, [1, 0, 2, 0]]  # greedy CTC: "ab"
    reads_ac = np.eye(6, dtype=np.float32)[None, [1, 0, 3, 0]]  # "ac"
    comparison.add("right", reads_ab, reads_ab, label="ab")
    comparison.add("wrong", reads_ab, reads_ac, label="ab")
    comparison.add("both wrong", reads_ab, reads_ab, label="abd")
    summary = comparison.summary()
    assert summary["label_exact_match"] == pytest.approx(1 / 3)
    interval = comparison.estimates()["label_exact_match"].interval
    assert (interval.method, interval.samples) == ("wilson", 3)
    result = judge(Gate(metric="label_exact_match", min=0.5), {"text": summary}, {}, {"text": _spec("ctc")})
    assert not result.passed and result.observed == pytest.approx(1 / 3)


@pytest.mark.parametrize("metric", ["latency_ratio", "image_latency_ratio", "token_latency_ratio"])
def test_every_latency_is_judged_by_its_interval_over_timed_rounds(metric: str) -> None:
    """A latency straddling its bound after the extra rounds is undecided (exit 4), not passed on its median."""
    straddling = judge(Gate(metric=metric, max=0.9), {}, {metric: 0.85}, {}, intervals={"": {metric: Interval(0.8, 0.95, 15, "exact")}})
    assert straddling.verdict == "inconclusive"
    assert latency_bounds([Gate(metric=metric, max=0.9)], metric) == [(None, 0.9)]
