"""FP16 repair when nothing overflows: the weights' rounding itself costs the gate, and the search keeps the nodes
whose rounding moves the outputs most (per value kept) in FP32 — ranked and validated on the tuning split."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quant.fp16.repair import _affordable, _search_down
from quant.fp16.rounding import CAST_ALLOWANCE, RoundingCost, RoundingRanking, rounding_costs
from quant.outcome import VariantOutcome
from tests.conftest import HEIGHT, run_cli
from tests.test_fp16_preflight import _random_feeds, _variant, _workspace

# Three taps on the same grey value: the output is 0.5 x grey in FP32, but FP16 holds 1000.3 as 1000.5 and -1000.1 as
# -1000.0, so the converted weights give 0.8 x grey. The values are identical, so their own FP16 rounding cancels.
CANCELLING = [1000.3, -1000.1, 0.3]


def cancelling_model() -> onnx.ModelProto:
    """grey = mean of x over channels; y = Conv([grey, grey, grey], CANCELLING) + (grey * 2048) / 2048.

    Nothing comes near FP16's range; the largest tensor (grey * 2048) is what an overflow ranking tries first,
    and its two Muls have exact FP16 weights (powers of two): only the Conv's rounding matters."""
    inits = [
        numpy_helper.from_array(np.asarray(CANCELLING, np.float32).reshape(1, 3, 1, 1), "w"),
        numpy_helper.from_array(np.asarray(2048.0, np.float32), "up"),
        numpy_helper.from_array(np.asarray(1 / 2048, np.float32), "down"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["grey"], name="grey", axes=[1], keepdims=1),
        helper.make_node("Concat", ["grey", "grey", "grey"], ["taps"], name="taps", axis=1),
        helper.make_node("Conv", ["taps", "w"], ["c"], name="cancelling"),
        helper.make_node("Mul", ["grey", "up"], ["big"], name="scale_up"),
        helper.make_node("Mul", ["big", "down"], ["back"], name="scale_down"),
        helper.make_node("Add", ["c", "back"], ["y"], name="sum"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, HEIGHT, "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, HEIGHT, "W"])
    model = helper.make_model(helper.make_graph(nodes, "cancel", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_rounding_costs_rank_the_cancelling_conv_first_and_exact_weights_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(cancelling_model(), str(path))
    costs = {c.node: c for c in rounding_costs(path, _random_feeds(2), skip=set(), skip_ops=set())}
    assert set(costs) == {"cancelling", "scale_up", "scale_down"}  # the nodes that read float weights
    assert costs["cancelling"].output_change > 1e-3 and costs["cancelling"].values == 3
    assert costs["scale_up"].output_change == 0 and costs["scale_down"].output_change == 0
    assert rounding_costs(path, _random_feeds(2), skip={"cancelling"}, skip_ops=set())[0].node != "cancelling"


def test_only_what_the_size_gate_can_afford_is_searched() -> None:
    costs = [RoundingCost("a", "Mul", 1, 9.0), RoundingCost("b", "Conv", 1000, 8.0), RoundingCost("c", "Mul", 1, 1.0)]
    costs.append(RoundingCost("d", "Mul", 1, 0.0))  # moves nothing: never worth keeping
    first = VariantOutcome(name="v", method="fp16", options={}, size_ratio=0.50)
    ranking = RoundingRanking(costs, samples=2)
    room_for_two = 2 * (1 + CAST_ALLOWANCE) + 2 * (1000 + CAST_ALLOWANCE)
    assert _affordable(ranking, [], first, 0.55, fp32_bytes=int(room_for_two / 0.05)) == ["a", "b"]
    assert _affordable(ranking, [], first, 0.55, fp32_bytes=int(room_for_two / 0.05) - 100) == ["a"]
    assert _affordable(ranking, ["a"], first, None, fp32_bytes=1) == ["b", "c"]  # no size gate: every node that moves the outputs


def test_rounding_search_tries_everything_affordable_first_then_bisects_down_to_the_fewest() -> None:
    candidates = [f"n{i}" for i in range(40)]
    tried: list[int] = []

    def attempt_needing(count: int):  # passes once the first `count` candidates are kept (a stand-in for build + validate)
        def attempt(keep: list[str]) -> VariantOutcome:
            tried.append(len(keep) - 1)
            passed = count <= len(candidates) and set(candidates[:count]) <= set(keep)
            return VariantOutcome(name="v", method="fp16", options={}, status="passed" if passed else "failed")

        return attempt

    assert "first 5 by weight rounding" in _search_down(attempt_needing(5), ["flagged"], candidates, time.perf_counter() + 600)
    assert tried == [40, 20, 10, 5, 2, 3, 4]
    tried.clear()
    assert "all 40 node(s)" in _search_down(attempt_needing(41), ["flagged"], candidates, time.perf_counter() + 600) and tried == [40]
    tried.clear()
    assert "time budget" in _search_down(attempt_needing(1), [], candidates, time.perf_counter() - 1) and not tried


def test_repair_keeps_the_rounding_sensitive_node_chosen_on_the_tuning_split_where_overflow_candidates_fail(tmp_path: Path) -> None:
    settings = {"max_nodes": 2, "rounding_samples": 2}
    variants = {"plain": {"method": "fp16"}, "repaired": {"method": "fp16", "repair": "auto", "preflight": settings}}
    recipe = _workspace(tmp_path, cancelling_model(), variants, [{"metric": "snr_db", "min": 40}, {"metric": "nonfinite", "max": 0}], tuning=True)
    done = run_cli("--recipe", str(recipe), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    plain, repaired = _variant(results, "plain"), _variant(results, "repaired")
    assert plain["status"] == "failed" and repaired["status"] == "passed", repaired.get("search")
    attempts = repaired["search"]["attempts"]
    assert {a["split"] for a in attempts} == {"tuning"}
    # The scan flags nothing; the overflow ranking's two candidates (the large tensor's Muls) fail; the rounding ranking's first passes.
    assert [a["kept_fp32"] for a in attempts] == [[], ["scale_up"], ["scale_up", "scale_down"], ["cancelling"]]
    assert [a["passed"] for a in attempts] == [False, False, False, True]
    assert [a["gates_cleared_by"] for a in attempts] == ["value", "value", "value", "interval"]  # the rounding search's are strict
    assert [a["stage"] for a in attempts] == ["scan", "overflow", "overflow", "weight_rounding"]
    assert repaired["build"]["keep_fp32"] == ["cancelling"] and "weight rounding" in repaired["build"]["kept_fp32_reasons"]["cancelling"]
    assert repaired["build"]["fp16_rounding"]["split"] == "tuning" and repaired["build"]["fp16_rounding"]["top"][0]["node"] == "cancelling"
    assert "weight-rounding ranking: 3 weighted nodes on 2 tuning samples" in (tmp_path / "run" / "summary.md").read_text()
    assert "Weight-rounding ranking" in (tmp_path / "run" / "report.html").read_text()
    # The built graph changed: the Conv keeps FP32 weights and computes in FP32, the plain one reads FP16 weights.
    for name, weight_type in (("plain", TensorProto.FLOAT16), ("repaired", TensorProto.FLOAT)):
        model = onnx.load(str(tmp_path / "run" / "variants" / f"{name}.onnx"))
        conv = next(n for n in model.graph.node if n.name == "cancelling")
        assert next(t for t in model.graph.initializer if t.name == conv.input[1]).data_type == weight_type
