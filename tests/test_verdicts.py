"""Gates that read intervals: must_clear: interval, latency's three-way verdict, the sample-count
check, and the run's exit code when only undecided variants stand in the way."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from quant.gates import judge, overall_verdict
from quant.intervals import Interval, wilson
from quant.outcome import VariantOutcome
from quant.recipe.schema import Gate, OutputSpec, Recipe
from quant.release.policy import EXIT_INCONCLUSIVE, run_verdict
from tests.conftest import base_recipe, run_cli, write_recipe

CTC = {"probs": OutputSpec(kind="ctc")}


def gate(**fields: object) -> Gate:
    return Gate.model_validate(fields)


def test_interval_gate_fails_a_point_that_passes_on_too_few_lines() -> None:
    # 49 of 50 lines agree: 0.98 meets min 0.98, but the Wilson interval reaches down to ~0.89.
    metrics, intervals = {"probs": {"ctc_exact_match": 49 / 50}}, {"probs": {"ctc_exact_match": wilson(49, 50)}}
    point = judge(gate(metric="ctc_exact_match", min=0.98), metrics, {}, CTC, intervals=intervals)
    strict = judge(gate(metric="ctc_exact_match", min=0.98, must_clear="interval"), metrics, {}, CTC, intervals=intervals)
    assert point.passed and point.interval == wilson(49, 50)
    assert not strict.passed and strict.verdict == "failed" and "interval" in strict.reason
    assert "n=50" in strict.describe() and strict.to_dict()["interval"]["samples"] == 50


def test_label_cer_delta_gate_reads_the_upper_end_of_its_interval() -> None:
    metrics = {"probs": {"label_cer_delta": 0.002}}
    intervals = {"probs": {"label_cer_delta": Interval(-0.001, 0.004, 300, "bootstrap")}}
    assert judge(gate(metric="label_cer_delta", max=0.005, must_clear="interval"), metrics, {}, CTC, intervals=intervals).passed
    assert not judge(gate(metric="label_cer_delta", max=0.003, must_clear="interval"), metrics, {}, CTC, intervals=intervals).passed
    assert judge(gate(metric="label_cer_delta", max=0.003), metrics, {}, CTC, intervals=intervals).passed


@pytest.mark.parametrize(
    ("low", "high", "verdict"),
    [(0.70, 0.85, "passed"), (0.92, 0.99, "failed"), (0.85, 0.95, "inconclusive")],
)
def test_latency_is_judged_by_its_interval(low: float, high: float, verdict: str) -> None:
    intervals = {"": {"latency_ratio": Interval(low, high, 30, "bootstrap")}}
    # The point sits on the passing side every time: it must not decide when the interval straddles.
    result = judge(gate(metric="latency_ratio", max=0.9), {}, {"latency_ratio": min(0.89, high)}, CTC, intervals=intervals)
    assert result.verdict == verdict
    assert overall_verdict([result]) == verdict


def test_a_failed_gate_outweighs_an_inconclusive_one() -> None:
    intervals = {"": {"latency_ratio": Interval(0.85, 0.95, 30, "bootstrap")}}
    undecided = judge(gate(metric="latency_ratio", max=0.9), {}, {"latency_ratio": 0.9}, CTC, intervals=intervals)
    failed = judge(gate(metric="size_ratio", max=0.3), {}, {"size_ratio": 0.5}, CTC)
    assert overall_verdict([undecided, failed]) == "failed"


def test_must_clear_interval_needs_a_metric_with_an_interval() -> None:
    with pytest.raises(ValidationError, match="has no interval"):
        gate(metric="size_ratio", max=0.4, must_clear="interval")
    with pytest.raises(ValidationError, match="needs 'min' or 'max'"):
        gate(metric="ctc_cer", max_regression=0.01, must_clear="interval")


def test_a_threshold_the_evaluation_set_cannot_support_is_a_recipe_error(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    gates = [{"metric": "cosine", "min": 0.9}, {"metric": "ctc_exact_match", "min": 0.95, "must_clear": "interval"}]
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], gates=gates))
    refused = run_cli("--recipe", str(path), "--validate", cwd=root)
    assert refused.returncode == 2, refused.stderr
    assert "gates[1].min" in refused.stderr and "10 samples" in refused.stderr and "73 samples" in refused.stderr
    gates[1]["must_clear"] = "point"  # a point gate may still be judged (and shows its interval)
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], gates=gates))
    accepted = run_cli("--recipe", str(path), "--validate", cwd=root)
    assert accepted.returncode == 0, accepted.stderr


def _outcome(name: str, status: str) -> VariantOutcome:
    return VariantOutcome(name=name, method="fp16", options={}, status=status)  # type: ignore[arg-type]


def test_only_undecided_variants_in_the_way_exit_4_never_0_or_1(workspace: dict[str, Path]) -> None:
    recipe = Recipe.model_validate(base_recipe(workspace["model"], workspace["calib"], workspace["eval"]))
    undecided = [_outcome("a", "inconclusive"), _outcome("b", "failed")]
    code, verdict = run_verdict(recipe.promotion, undecided, [], False)
    assert code == EXIT_INCONCLUSIVE == 4 and verdict.startswith("INCONCLUSIVE") and "a (inconclusive)" in verdict
    strict = recipe.model_copy(update={"promotion": recipe.promotion.model_copy(update={"policy": "all_or_nothing"})})
    assert run_verdict(strict.promotion, undecided, [], False)[0] == 1  # b failed: settling a cannot help
    passing = [_outcome("a", "inconclusive"), _outcome("b", "passed")]
    assert run_verdict(recipe.promotion, passing, passing[1:], True)[0] == 0


def test_junit_shows_intervals_and_never_passes_an_inconclusive_gate() -> None:
    import xml.etree.ElementTree as ET

    from quant.report.junit import render_junit

    rounds = {"": {"latency_ratio": Interval(0.85, 0.95, 60, "bootstrap")}}
    straddling = judge(gate(metric="latency_ratio", max=0.9), {}, {"latency_ratio": 0.88}, CTC, intervals=rounds)
    lines = {"probs": {"ctc_exact_match": wilson(190, 200)}}
    holding = judge(gate(metric="ctc_exact_match", min=0.9), {"probs": {"ctc_exact_match": 0.95}}, {}, CTC, intervals=lines)
    results = {"recipe": {"name": "r"}, "variants": {"v": {"status": "inconclusive", "gates": [straddling.to_dict(), holding.to_dict()]}}}
    suite = ET.fromstring(render_junit([results]).split("\n", 1)[1]).find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    latency, agreement = suite.findall("testcase")
    failure = latency.find("failure")
    assert failure is not None and failure.get("type") == "GateInconclusive"
    assert agreement.find("failure") is None and "n=200" in (agreement.findtext("system-out") or "")
