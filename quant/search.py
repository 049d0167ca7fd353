"""Automatic fallback for static INT8: keep the most sensitive nodes in float until every gate holds.

Every choice is made on the tuning split (attempts judged, nodes ranked); the attempt chosen is then
judged once more, on the evaluation split the search never read, and that verdict is the variant's.

Each attempt reuses the cached calibration ranges, so only quantization and judging are repeated.
Keeping nodes in float costs speed, so the search stops as soon as the latency or size gate is
what fails: more float nodes cannot help there.

The caller hands the search its seams as callables, so the search knows nothing of how a run builds or
judges: `build(options, out_path)` builds a variant's options into a file (the exclusions are typed
options, `exclude_nodes`, set with `model_copy`), `judge(path)` judges a built file on the tuning split,
and `rejudge(path)` judges the chosen one on the evaluation split (None when the two are one split).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quant.errors import BuildError
from quant.executor import run_isolated
from quant.files import copy_model
from quant.methods.base import BuildResult
from quant.metrics.catalogue import HEADLINE_METRICS, VARIANT_METRICS, worst_over_outputs
from quant.outcome import VariantOutcome
from quant.recipe.schema import StaticInt8Options
from quant.sensitivity import NodeSensitivity, rank_nodes

Build = Callable[[StaticInt8Options, Path], BuildResult]  # these options into this file (in a child process)
Judge = Callable[[Path], VariantOutcome]  # compare, measure and gate a built file: a new outcome
Feeds = Callable[[int], list[tuple[str, dict[str, np.ndarray]]]]  # the first n tuning samples (id, feeds), for the ranking


@dataclass(frozen=True)
class SearchSetup:
    """Where the search writes (attempts under `work_dir`, the chosen model at `final`) and what it tunes on."""

    work_dir: Path
    final: Path
    tuning_name: str
    tuning_samples: int


def default_steps(max_nodes: int) -> list[int]:
    """1, 2, 4, 8, ... up to max_nodes (max_nodes itself always tried last)."""
    steps, k = [], 1
    while k < max_nodes:
        steps.append(k)
        k *= 2
    return [*steps, max_nodes]


def _accuracy_failed(outcome: VariantOutcome) -> bool:
    return any(g.metric not in VARIANT_METRICS for g in outcome.failed_gates)


def _attempt_record(outcome: VariantOutcome, excluded: list[str]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "split": outcome.judged_on,
        "nodes_in_float": len(excluded),
        "excluded": excluded,
        "passed": outcome.passed,
        "status": outcome.status,
        "latency_ratio": outcome.latency.ratio if outcome.latency else None,
        "size_ratio": outcome.size_ratio,
        "failed_gates": [f"{g.metric}={g.observed:.4g}" if g.observed is not None else g.metric for g in outcome.failed_gates],
    }
    for metric in HEADLINE_METRICS:
        value = worst_over_outputs(metric, outcome.metrics.values())
        if value is not None:
            record[metric] = value
    if outcome.error:
        record["error"] = outcome.error
    if outcome.note:
        record["note"] = outcome.note
    return record


def _rank_in_child(float_model: Path, qdq_model: Path, feeds: list[dict[str, Any]], op_types: list[str] | None) -> list[NodeSensitivity]:
    return rank_nodes(float_model, qdq_model, feeds, op_types)


def _ranking(
    variant: StaticInt8Options, first: VariantOutcome, build: Build, feeds: Feeds, work_dir: Path
) -> tuple[list[NodeSensitivity], list[str], float]:
    """Rank on a QDQ build (the QOperator form has no per-tensor Q/DQ pairs to compare); (ranking, sample ids, seconds)."""
    qdq_path = first.model_path
    float_model = Path(first.build["prepared_model"])
    if variant.format != "QDQ" or qdq_path is None:
        qdq_variant = variant.model_copy(update={"format": "QDQ", "fallback": None})
        qdq_path = build(qdq_variant, work_dir / "ranking-qdq.onnx").path
    samples = feeds(variant.fallback.samples if variant.fallback else 8)
    ranking, stats = run_isolated(_rank_in_child, float_model, qdq_path, [f for _, f in samples], variant.op_types)
    return ranking, [sample_id for sample_id, _ in samples], stats["seconds"]


def _choose(judged: list[tuple[VariantOutcome, list[str]]]) -> tuple[int, str]:
    """Which attempt becomes the variant, and why: the first that passed; else the quantized one that
    failed the fewest gates with the fewest nodes in float. An FP32 copy is chosen only when every attempt was one."""
    for index, (trial, excluded) in enumerate(judged):
        if trial.passed:
            return index, f"the first attempt that passed every gate ({len(excluded)} node(s) in float)"
    rank = {"inconclusive": 0, "failed": 1, "error": 2, "nothing_quantized": 3}
    index = min(range(len(judged)), key=lambda i: (rank[judged[i][0].status], len(judged[i][0].failed_gates), len(judged[i][1])))
    trial = judged[index][0]
    if trial.status == "failed":
        failed = ", ".join(g.metric for g in trial.failed_gates)
        return index, f"no attempt passed; this one failed the fewest gates ({failed}) with the fewest nodes in float"
    if trial.status == "inconclusive":
        return index, "no attempt passed; this one failed no gate, but its latency stayed inconclusive"
    if trial.status == "error":
        return index, f"every attempt that quantized anything failed to build or run ({trial.error})"
    return index, "no attempt quantized any node"


def search_fallback(
    variant: StaticInt8Options,
    template: VariantOutcome,
    build: Build,
    judge: Judge,
    rejudge: Judge | None,
    feeds: Feeds,
    setup: SearchSetup,
    log: Callable[[str], None],
) -> tuple[VariantOutcome, list[str]]:
    """Build, judge on the tuning split, and if accuracy gates fail, retry with the most sensitive nodes in float;
    the attempt chosen is judged again by `rejudge` on the evaluation split (None: tuning is the evaluation split).

    Returns the variant's outcome (its model copied to `setup.final`) and the nodes the chosen attempt kept in
    float beyond the recipe's own `exclude_nodes`. `template` names the variant for attempts that fail to build."""
    assert variant.fallback is not None
    fallback, name = variant.fallback, template.name
    attempts: list[dict[str, Any]] = []
    judged: list[tuple[VariantOutcome, list[str]]] = []

    def attempt(excluded: list[str]) -> VariantOutcome:
        options = variant.model_copy(update={"exclude_nodes": list(dict.fromkeys([*variant.exclude_nodes, *excluded]))})
        result: BuildResult | None = None
        try:
            result = build(options, setup.work_dir / f"fallback-{len(excluded):03d}.onnx")
            trial = judge(result.path)
        except BuildError as error:
            trial = VariantOutcome(name=name, method=template.method, options=template.options, status="error", error=str(error))
        if result is not None:
            trial.build = result.details
        attempts.append(_attempt_record(trial, excluded))
        judged.append((trial, excluded))
        log(f"{name}: {len(excluded)} node(s) in float -> {trial.status} on the {setup.tuning_name} samples")
        return trial

    first = attempt([])
    ranking: list[NodeSensitivity] = []
    ranked_on: list[str] = []
    conclusion = "passed without keeping any node in float"
    if first.status == "nothing_quantized":
        conclusion = "nothing was quantized even with every node allowed; keeping nodes in float cannot change that, so no search"
    elif first.status == "error":
        conclusion = "the build without any node in float failed, so there is nothing to rank; no search"
    elif not first.passed:
        if not _accuracy_failed(first):
            conclusion = "only speed/size gates failed; keeping nodes in float would make it slower, so no search"
        else:
            ranking, ranked_on, seconds = _ranking(variant, first, build, feeds, setup.work_dir)
            log(f"{name}: ranked {len(ranking)} quantized nodes by added error on {len(ranked_on)} {setup.tuning_name} samples in {seconds:.1f} s")
            for k in fallback.steps or default_steps(fallback.max_nodes):
                k = min(k, len(ranking), fallback.max_nodes)
                if k == 0 or k in (a["nodes_in_float"] for a in attempts):
                    continue
                trial = attempt([n.node for n in ranking[:k]])
                if trial.passed:
                    conclusion = f"passed with {k} node(s) in float"
                    break
                if trial.status == "nothing_quantized":
                    conclusion = f"with {k} node(s) in float nothing was quantized any more; an FP32 copy is not an INT8 variant"
                    break
                if trial.status != "error" and not _accuracy_failed(trial):
                    failed = ", ".join(g.metric for g in trial.failed_gates)
                    conclusion = f"accuracy held with {k} node(s) in float, but {failed} failed; more float nodes only cost more"
                    break
            else:
                conclusion = f"no attempt passed within {fallback.max_nodes} node(s) in float"
    index, why = _choose(judged)
    chosen, excluded = judged[index]
    search = {
        "tuned_on": setup.tuning_name,
        "tuning_samples": setup.tuning_samples,
        "ranked_on": ranked_on,
        "attempts": attempts,
        "sensitivity": [n.to_dict() for n in ranking[:50]],
        "metrics": [m for m in HEADLINE_METRICS if any(m in a for a in attempts)],
        "chosen_attempt": index,
        "chosen_nodes_in_float": len(excluded),
        "chosen_because": why,
        "conclusion": conclusion if chosen.passed else f"{conclusion}; the chosen attempt kept {len(excluded)} node(s) in float: {why}",
    }
    if chosen.model_path is None:
        chosen.search = search
        return chosen, excluded
    copy_model(chosen.model_path, setup.final)  # with its external-data file, when it has one
    if rejudge is None or chosen.status == "nothing_quantized":
        verdict = chosen  # already judged on the evaluation split (tuning on it was allowed explicitly), or never judged
        verdict.model_path = setup.final
    else:
        log(f"{name}: judging the chosen attempt ({len(excluded)} node(s) in float) on the evaluation samples the search never read")
        verdict = rejudge(setup.final)
        verdict.build = chosen.build
        search["verdict_on_tuning"] = chosen.status
    verdict.search = search
    return verdict, excluded
