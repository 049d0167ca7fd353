"""Gates at their edges: a value on a bound passes, the next float beyond it fails; a regression gate
fails when the variant got worse than the last release by more than allowed, in the metric's own
direction, and holds when it got better."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from quant.gates import GateResult, judge, latency_bounds, overall_verdict, regression
from quant.intervals import Interval
from quant.recipe.schema import Gate, OutputSpec
from tests.conftest import base_recipe, run_cli, tiny_ctc_model, write_recipe

SPECS = {"out": OutputSpec()}


def _judge(gate: Gate, value: float, previous: float | None = None) -> bool:
    earlier = None if previous is None else {"out": {gate.metric: previous}}
    return judge(gate, {"out": {gate.metric: value}}, {}, SPECS, earlier).passed


@pytest.mark.parametrize("bound", [0.99, 0.5, 0.0, 1.0])
def test_a_value_on_the_min_passes_and_the_next_float_below_fails(bound: float) -> None:
    gate = Gate(metric="cosine", min=bound)
    assert _judge(gate, bound)
    assert not _judge(gate, float(np.nextafter(bound, -math.inf)))
    assert _judge(gate, float(np.nextafter(bound, math.inf)))


@pytest.mark.parametrize("bound", [0.9, 0.0, 1.05])
def test_a_value_on_the_max_passes_and_the_next_float_above_fails(bound: float) -> None:
    gate = Gate(metric="max_abs", max=bound)
    assert _judge(gate, bound)
    assert not _judge(gate, float(np.nextafter(bound, math.inf)))
    assert _judge(gate, float(np.nextafter(bound, -math.inf)))


def test_variant_wide_bounds_hold_on_the_boundary_too() -> None:
    on_bound = judge(Gate(metric="latency_ratio", max=0.9), {}, {"latency_ratio": 0.9}, SPECS)
    assert on_bound.passed and on_bound.observed == 0.9 and on_bound.output is None
    assert not judge(Gate(metric="size_ratio", max=0.3), {}, {"size_ratio": 0.30000001}, SPECS).passed
    assert not judge(Gate(metric="size_ratio", max=0.3), {}, {}, SPECS).passed  # not measured: never a pass


def test_min_and_max_together_need_both() -> None:
    gate = Gate(metric="snr_db", min=20.0, max=40.0)
    assert [_judge(gate, v) for v in (19.0, 20.0, 30.0, 40.0, 41.0)] == [False, True, True, True, False]


def test_regression_is_measured_in_the_direction_of_the_metric() -> None:
    # Higher is better (cosine): falling is a regression, rising is not.
    assert regression("cosine", previous=0.99, current=0.98) == pytest.approx(0.01)
    assert regression("cosine", previous=0.98, current=0.99) == pytest.approx(-0.01)
    # Lower is better (CER): rising is a regression.
    assert regression("ctc_cer", previous=0.01, current=0.05) == pytest.approx(0.04)
    assert regression("ctc_cer", previous=0.05, current=0.01) == pytest.approx(-0.04)
    assert regression("cosine", previous=0.99, current=math.nan) == math.inf  # NaN is the worst regression


@pytest.mark.parametrize(
    ("metric", "previous", "current", "passes"),
    [
        ("cosine", 0.99, 0.98, False),  # worse by 0.01 > 0.005
        ("cosine", 0.98, 0.99, True),  # better
        ("cosine", 0.99, 0.987, True),  # worse by 0.003: allowed
        ("ctc_exact_match", 0.5, 0.25, False),
        ("ctc_cer", 0.01, 0.05, False),  # lower is better: a rise of 0.04 fails
        ("ctc_cer", 0.05, 0.01, True),
        ("ctc_cer", 0.01, 0.013, True),
    ],
)
def test_a_regression_gate_fails_only_when_the_variant_got_worse_than_allowed(metric: str, previous: float, current: float, passes: bool) -> None:
    gate = Gate(metric=metric, max_regression=0.005 if metric != "ctc_exact_match" else 0.2)
    result = judge(gate, {"out": {metric: current}}, {}, {"out": OutputSpec(kind="ctc")}, {"out": {metric: previous}})
    assert result.passed is passes and result.previous == previous
    assert ("regressed from" in result.reason) is not passes


def test_a_regression_exactly_at_the_limit_passes() -> None:
    # Binary fractions: 0.75 - 0.5 is exactly 0.25, no rounding in the way.
    gate = Gate(metric="cosine", max_regression=0.25)
    assert _judge(gate, 0.5, previous=0.75)
    assert not _judge(gate, float(np.nextafter(0.5, -math.inf)), previous=0.75)


def test_without_an_earlier_release_a_regression_gate_holds_and_says_why() -> None:
    result = judge(Gate(metric="cosine", max_regression=0.0), {"out": {"cosine": 0.5}}, {}, SPECS, None)
    assert result.passed and "no earlier release" in result.reason and result.previous is None
    # The variant-wide table ('' in the manifest) feeds regression gates on size and latency.
    slower = judge(Gate(metric="latency_ratio", max_regression=0.05), {}, {"latency_ratio": 0.8}, SPECS, {"": {"latency_ratio": 0.7}})
    assert not slower.passed and slower.previous == 0.7


def test_a_variant_worse_than_the_last_release_fails_its_regression_gate_end_to_end(workspace: dict[str, Path]) -> None:
    """Two different builds, not the same one twice: INT8 of the model is released, then the model
    gets an outlier weight (its INT8 collapses) and the same recipe must fail `max_regression`."""
    root = workspace["root"]
    variants = {"int8": {"method": "dynamic_int8", "op_types": ["Conv"], "per_channel": False}}
    gates = [{"metric": "cosine", "max_regression": 0.01}]
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants=variants, gates=gates))

    def run(out: str) -> tuple[int, dict]:
        done = run_cli("--recipe", str(path), "--out", str(root / out), cwd=root)
        return done.returncode, json.loads((root / out / "results.json").read_text())

    code, first = run("run1")
    assert code == 0 and (root / "releases" / "tiny" / "v1").is_dir()
    onnx.save(tiny_ctc_model(weight_outlier=True), str(workspace["model"]))
    code, second = run("run2")
    gate = second["variants"]["int8"]["gates"][0]
    assert code == 1 and not gate["passed"] and "regressed" in gate["reason"]
    assert gate["previous"] == first["variants"]["int8"]["gates"][0]["observed"] > gate["observed"] + 0.01
    assert not (root / "releases" / "tiny" / "v2").exists()


def test_a_gate_describes_itself_as_the_verbose_log_and_junit_show_it() -> None:
    low = judge(Gate(metric="cosine", min=0.99), {"a": {"cosine": 0.95}, "b": {"cosine": 0.999}}, {}, {"a": OutputSpec(), "b": OutputSpec()})
    assert low.describe() == "cosine[a] = 0.95 (needs >= 0.99)"
    both = judge(Gate(metric="snr_db", min=20, max=40), {"out": {"snr_db": 41.0}}, {}, SPECS)
    assert both.describe() == "snr_db[out] = 41 (needs >= 20 and <= 40)"
    slower = judge(Gate(metric="latency_ratio", max=0.9, max_regression=0.05), {}, {"latency_ratio": 0.8}, SPECS, {"": {"latency_ratio": 0.7}})
    assert slower.describe() == (
        "latency_ratio = 0.8 (needs <= 0.9 and at most 0.05 worse than the last release (0.7)): regressed from 0.7 in the last release"
    )
    first = judge(Gate(metric="cosine", max_regression=0.01), {"out": {"cosine": 0.9}}, {}, SPECS)
    assert first.describe() == (
        "cosine[out] = 0.9 (needs at most 0.01 worse than the last release (n/a)): no earlier release of this variant to compare with"
    )
    missing = judge(Gate(metric="size_ratio", max=0.5), {}, {}, SPECS)
    assert missing.describe().startswith("size_ratio = n/a (needs <= 0.5): metric not available")


def test_a_judged_gate_cannot_be_changed_afterwards() -> None:
    """The verdict the gate gave is the one every reader sees (log, summary, JUnit, exit code): nothing can flip it later."""
    result = judge(Gate(metric="cosine", min=0.99), {"out": {"cosine": 0.95}}, {}, SPECS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.passed = True  # type: ignore[misc]
    assert result.verdict == "failed"


def test_non_finite_observations_stay_standard_json() -> None:
    for value, text in ((math.nan, "nan"), (math.inf, "inf")):
        result = judge(Gate(metric="max_abs", max=1.0), {"out": {"max_abs": value}}, {}, SPECS)
        assert not result.passed and json.loads(json.dumps(result.to_dict(), allow_nan=False))["observed"] == text
    assert judge(Gate(metric="max_abs", max=1.0), {"out": {"max_abs": 0.5}}, {}, SPECS).to_dict()["observed"] == 0.5


def test_for_an_upper_bound_a_nan_output_is_the_worst_and_decides() -> None:
    specs = {"a": OutputSpec(), "b": OutputSpec(), "c": OutputSpec()}
    result = judge(Gate(metric="max_abs", max=1.0), {"a": {"max_abs": 0.5}, "b": {"max_abs": math.nan}, "c": {"max_abs": 0.9}}, {}, specs)
    assert not result.passed and result.output == "b" and math.isnan(result.observed)  # type: ignore[arg-type]
    highest = judge(Gate(metric="max_abs", max=1.0), {"a": {"max_abs": 0.5}, "c": {"max_abs": 2.0}}, {}, specs)
    assert not highest.passed and highest.output == "c"
    lowest = judge(Gate(metric="cosine", min=0.9), {"a": {"cosine": 0.95}, "b": {"cosine": math.nan}}, {}, specs)
    assert not lowest.passed and lowest.output == "b"


@pytest.mark.parametrize("names", [("a", "z"), ("z", "a")])
def test_the_worst_output_decides_whatever_its_name(names: tuple[str, str]) -> None:
    worse, better = names
    specs = {name: OutputSpec() for name in names}
    upper = judge(Gate(metric="max_abs", max=1.0), {better: {"max_abs": 0.5}, worse: {"max_abs": 2.0}}, {}, specs)
    lower = judge(Gate(metric="cosine", min=0.9), {better: {"cosine": 0.95}, worse: {"cosine": 0.5}}, {}, specs)
    assert (upper.output, upper.observed, upper.passed) == (worse, 2.0, False)
    assert (lower.output, lower.observed, lower.passed) == (worse, 0.5, False)


def test_latency_straddling_its_bound_is_inconclusive_not_passed_or_failed() -> None:
    gate = Gate(metric="latency_ratio", max=0.9)

    def with_interval(low: float, high: float) -> GateResult:
        return judge(gate, {}, {"latency_ratio": (low + high) / 2}, SPECS, intervals={"": {"latency_ratio": Interval(low, high, 15, "exact")}})

    straddling = with_interval(0.8, 0.95)
    assert (straddling.passed, straddling.inconclusive, straddling.verdict) == (False, True, "inconclusive") and "straddles" in straddling.reason
    assert with_interval(0.7, 0.9).verdict == "passed" and with_interval(0.91, 1.2).verdict == "failed"


@pytest.mark.parametrize(
    ("gate", "value"),
    [
        (Gate(metric="cosine", min=0.99), 0.5),
        (Gate(metric="max_abs", max=0.1), 0.2),
        (Gate(metric="cosine", min=0.99), math.nan),
        (Gate(metric="cosine", min=0.9, max_regression=0.01), 0.95),  # regressed from 0.99
    ],
)
def test_a_missed_accuracy_gate_is_failed_never_inconclusive(gate: Gate, value: float) -> None:
    """Only a timed metric's interval can leave a gate undecided (exit 4); a missed accuracy gate fails the variant (exit 1)."""
    missed = judge(gate, {"out": {gate.metric: value}}, {}, SPECS, {"out": {gate.metric: 0.99}})
    held = judge(Gate(metric="cosine", min=0.5), {"out": {"cosine": 0.9}}, {}, SPECS)
    assert (missed.verdict, missed.inconclusive) == ("failed", False)
    assert (held.verdict, held.inconclusive) == ("passed", False)
    assert overall_verdict([held, missed]) == "failed" and overall_verdict([held]) == "passed"


def test_a_gate_that_must_clear_its_interval_fails_without_one() -> None:
    gate = Gate(metric="ctc_exact_match", min=0.9, must_clear="interval")
    metrics, specs = {"out": {"ctc_exact_match": 0.95}}, {"out": OutputSpec(kind="ctc")}
    missing = judge(gate, metrics, {}, specs)
    assert not missing.passed and not missing.inconclusive and missing.reason == "no interval was measured for this metric"
    wide = judge(gate, metrics, {}, specs, intervals={"out": {"ctc_exact_match": Interval(0.85, 0.99, 40, "wilson")}})
    assert not wide.passed and "does not" in wide.reason
    assert judge(gate, metrics, {}, specs, intervals={"out": {"ctc_exact_match": Interval(0.91, 0.99, 400, "wilson")}}).passed
    below = judge(gate, {"out": {"ctc_exact_match": 0.85}}, {}, specs, intervals={"out": {"ctc_exact_match": Interval(0.8, 0.9, 40, "wilson")}})
    assert not below.passed and below.reason == ""  # the value itself fails: no talk of an interval


def test_a_regression_only_gate_reads_the_worst_output_in_the_metric_direction() -> None:
    specs = {"a": OutputSpec(), "b": OutputSpec()}
    previous = {"a": {"cosine": 0.99}, "b": {"cosine": 0.99}}
    result = judge(Gate(metric="cosine", max_regression=0.01), {"a": {"cosine": 0.999}, "b": {"cosine": 0.9}}, {}, specs, previous)
    assert result.output == "b" and result.observed == 0.9 and not result.passed


def test_only_latency_bounds_are_settled_by_more_rounds() -> None:
    gates = [
        Gate(metric="latency_ratio", max=0.9),
        Gate(metric="latency_ratio", min=0.1, max=2.0),
        Gate(metric="latency_ratio", max_regression=0.1),  # no bound to settle
        Gate(metric="size_ratio", max=0.5),
        Gate(metric="cosine", min=0.99),
    ]
    assert latency_bounds(gates) == [(None, 0.9), (0.1, 2.0)]


def test_must_clear_read_from_a_recipe_string() -> None:
    built = "".join(["inter", "val"])  # noqa: FLY002  (not the interned literal: compared by value, not identity)
    gate = Gate.model_validate({"metric": "ctc_exact_match", "min": 0.9, "must_clear": built})
    result = judge(gate, {"out": {"ctc_exact_match": 0.95}}, {}, {"out": OutputSpec(kind="ctc")})
    assert not result.passed and result.describe().endswith(", whole interval): no interval was measured for this metric")


def test_a_latency_gate_read_from_a_recipe_is_settled_by_more_rounds() -> None:
    gate = Gate.model_validate(yaml.safe_load("metric: latency_ratio\nmax: 0.9"))  # a string from YAML, not a literal of the code
    assert latency_bounds([gate]) == [(None, 0.9)]
