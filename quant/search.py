"""Automatic fallback for static INT8: search settings, per-tensor overrides and nodes kept in float until every gate holds.

Every choice is made on the tuning split (attempts judged, nodes ranked); the attempt chosen is then
judged once more, on the evaluation split the search never read, and that verdict is the variant's.

The stages, each tried only while no attempt has passed (every attempt recorded with its split):
1. settings: the recipe's own, then each `fallback.candidates` entry (calibration, 7/8-bit weights,
   per-channel), all with no node in float; the best by gates failed, then the objective, carries on;
2. ranking: the nodes of that setting's build by the error they add (re-ranked for the setting chosen);
3. sensitive overrides: the top nodes quantized differently per tensor (8-bit weights, another
   calibration of their inputs) instead of kept in float: INT8 speed kept;
4. pairs: the top units alone and in pairs, so their interaction is measured, not assumed additive;
5. units in float: 1, 2, 4, ... of the most sensitive nodes or blocks (with `rerank`, each step adds the nodes
   ranked most sensitive on the previous step's model, as NNCF's accuracy control does);
6. step back: after a pass, the least sensitive units go back to INT8 while it passes (bisected).

Each attempt reuses the cached calibration ranges, so only quantization and judging are repeated.
An attempt's latency is measured only once its accuracy and size gates hold (`fallback.latency`): a
benchmark runs with nothing beside it, and speed cannot rescue an attempt that failed accuracy; so
the choice among failing attempts rests on accuracy alone, not on noisy timings.
Keeping nodes in float costs speed, so the search stops as soon as the latency or size gate is
what fails: more float nodes cannot help there.

The caller hands the search its seams as callables, so the search knows nothing of how a run builds or
judges: `build(options, out_path)` builds a variant's options into a file (the exclusions are typed
options, `exclude_nodes`, set with `model_copy`), `judge(path)` judges a built file on the tuning split,
and `rejudge(path)` judges the chosen one on the evaluation split (None when the two are one split).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quant.errors import BuildError
from quant.executor import current, run_isolated
from quant.files import copy_model
from quant.methods.base import BuildResult
from quant.metrics.catalogue import HEADLINE_METRICS, VARIANT_METRICS, badness, worst_over_outputs
from quant.outcome import VariantOutcome
from quant.recipe.schema import StaticInt8Options
from quant.search_space import graph_order, sensitive_overrides, settings_to_try, units_of
from quant.sensitivity import RANKING_MEMORY_MB, NodeSensitivity, rank_nodes
from quant.stages import timed

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


def _objective_value(outcome: VariantOutcome, objective: str | None) -> float | None:
    return worst_over_outputs(objective, outcome.metrics.values()) if objective else None


def _attempt_record(outcome: VariantOutcome, excluded: list[str], stage: str, changes: dict[str, Any], overridden: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "split": outcome.judged_on,
        "stage": stage,
        "changes": changes,
        "tensors_overridden": overridden,
        "nodes_in_float": len(excluded),
        "excluded": excluded,
        "passed": outcome.passed,
        "status": outcome.status,
        "latency_ratio": outcome.latency.ratio if outcome.latency else None,
        "latency_interval": [outcome.latency.interval.low, outcome.latency.interval.high] if outcome.latency and outcome.latency.interval else None,
        "size_ratio": outcome.size_ratio,
        "failed_gates": [f"{g.metric}={g.observed:.4g}" if g.observed is not None else g.metric for g in outcome.failed_gates],
    }
    for metric in HEADLINE_METRICS:
        value = worst_over_outputs(metric, outcome.metrics.values())
        if value is not None:
            record[metric] = value
    if outcome.latency_note:
        record["latency_note"] = outcome.latency_note
    if outcome.error:
        record["error"] = outcome.error
    if outcome.note:
        record["note"] = outcome.note
    return record


def _rank_in_child(
    float_model: Path, qdq_model: Path, feeds: list[dict[str, Any]], op_types: list[str] | None, memory_mb: int
) -> list[NodeSensitivity]:
    return rank_nodes(float_model, qdq_model, feeds, op_types, memory_mb)


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
    with timed("search ranking", first.name):
        memory_mb = variant.fallback.ranking_memory_mb if variant.fallback else RANKING_MEMORY_MB
        ranking, stats = run_isolated(_rank_in_child, float_model, qdq_path, [f for _, f in samples], variant.op_types, memory_mb)
    return ranking, [sample_id for sample_id, _ in samples], stats["seconds"]


# Best first: only the order matters (a status's rank is its place here).
_STATUS_ORDER = ("passed", "inconclusive", "failed", "error", "nothing_quantized")


def _score(trial: VariantOutcome, nodes_in_float: int, objective: str | None) -> tuple[float, ...]:
    """Smaller is better: passed first, then fewest failed gates, then the objective metric, then fewest nodes in float."""
    value = _objective_value(trial, objective)
    return (
        _STATUS_ORDER.index(trial.status),
        len(trial.failed_gates),
        badness(objective, value) if objective and value is not None else 0.0,
        nodes_in_float,
    )


def _choose(judged: list[tuple[VariantOutcome, list[str]]], objective: str | None = None) -> tuple[int, str]:
    """Which attempt becomes the variant, and why: the passing one with the fewest nodes in float (the first of
    equals); else the quantized one that failed the fewest gates, then was best by the objective, with the fewest
    nodes in float. An FP32 copy is chosen only when every attempt was one."""
    passing = [i for i, (trial, _) in enumerate(judged) if trial.passed]
    if passing:
        index = min(passing, key=lambda i: len(judged[i][1]))
        return index, f"the passing attempt with the fewest nodes in float ({len(judged[index][1])})"
    index = min(range(len(judged)), key=lambda i: _score(judged[i][0], len(judged[i][1]), objective))
    trial = judged[index][0]
    if trial.status == "failed":
        failed = ", ".join(g.metric for g in trial.failed_gates)
        by = f", best by {objective}" if objective else ""
        return index, f"no attempt passed; this one failed the fewest gates ({failed}){by}, with the fewest nodes in float"
    if trial.status == "inconclusive":
        return index, "no attempt passed; this one failed no gate, but its latency stayed inconclusive"
    if trial.status == "error":
        return index, f"every attempt that quantized anything failed to build or run ({trial.error})"
    return index, "no attempt quantized any node"


def _default_objective(first: VariantOutcome) -> str | None:
    """The first accuracy gate the recipe's own setting failed (what the search must improve)."""
    return next((g.metric for g in first.failed_gates if g.metric not in VARIANT_METRICS), None)


@dataclass
class _Attempts:
    """Every attempt of one search: its outcome, nodes in float and options (what the lock file records)."""

    judged: list[tuple[VariantOutcome, list[str]]]
    options: list[StaticInt8Options]
    records: list[dict[str, Any]]


def search_fallback(
    variant: StaticInt8Options,
    template: VariantOutcome,
    build: Build,
    judge: Judge,
    rejudge: Judge | None,
    feeds: Feeds,
    setup: SearchSetup,
    log: Callable[[str], None],
) -> tuple[VariantOutcome, StaticInt8Options]:
    """Build, judge on the tuning split, and if accuracy gates fail, search (stages in the module's docstring);
    the attempt chosen is judged again by `rejudge` on the evaluation split (None: tuning is the evaluation split).

    Returns the variant's outcome (its model copied to `setup.final`) and the options the chosen attempt was
    built with (its settings, tensor overrides and `exclude_nodes`: what the lock file records).
    `template` names the variant for attempts that fail to build."""
    assert variant.fallback is not None
    fallback, name = variant.fallback, template.name
    done = _Attempts([], [], [])

    def attempt(options: StaticInt8Options, excluded: list[str], stage: str, changes: dict[str, Any]) -> VariantOutcome:
        options = options.model_copy(update={"exclude_nodes": list(dict.fromkeys([*variant.exclude_nodes, *excluded]))})
        result: BuildResult | None = None
        started = time.perf_counter()
        built_at = started
        try:
            result = build(options, setup.work_dir / f"attempt-{len(done.judged):03d}.onnx")
            built_at = time.perf_counter()
            trial = judge(result.path)
        except BuildError as error:
            trial = VariantOutcome(name=name, method=template.method, options=template.options, status="error", error=str(error))
        if result is not None:
            trial.build = result.details
        overridden = len(options.tensor_overrides) - len(variant.tensor_overrides)
        done.records.append(_attempt_record(trial, excluded, stage, changes, overridden))
        # What the attempt cost (wall clock: the machine's load is in the run's environment record).
        done.records[-1]["seconds"] = {"build": round(built_at - started, 1), "judge": round(time.perf_counter() - built_at, 1)}
        done.judged.append((trial, excluded))
        done.options.append(options)
        what = ", ".join(f"{k}={v}" for k, v in changes.items()) or "recipe's setting"
        log(
            f"{name}: [{stage}] {what}, {overridden} tensor override(s), {len(excluded)} node(s) in float"
            f" -> {trial.status} on the {setup.tuning_name} samples"
        )
        return trial

    first = attempt(variant, [], "settings", {})
    objective = fallback.objective or _default_objective(first)
    search: dict[str, Any] = {
        "tuned_on": setup.tuning_name,
        "tuning_samples": setup.tuning_samples,
        "objective": objective,
        "machine": current().target_cpu().to_dict(),  # the CPU measuring latency decides 8-bit weights; its source names it
    }
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
            conclusion, ranking, ranked_on = _search_stages(variant, first, objective, attempt, done, build, feeds, setup, search, log)
    index, why = _choose(done.judged, objective)
    chosen, excluded = done.judged[index]
    search |= {
        "ranked_on": ranked_on,
        "attempts": done.records,
        "sensitivity": [n.to_dict() for n in ranking[:50]],
        "metrics": [m for m in HEADLINE_METRICS if any(m in a for a in done.records)],
        "chosen_attempt": index,
        "chosen_changes": done.records[index]["changes"],
        "chosen_nodes_in_float": len(excluded),
        "chosen_because": why,
        "conclusion": conclusion if chosen.passed else f"{conclusion}; the chosen attempt kept {len(excluded)} node(s) in float: {why}",
    }
    chosen_options = done.options[index]
    if chosen.model_path is None:
        chosen.search = search
        return chosen, chosen_options
    copy_model(chosen.model_path, setup.final)  # with its external-data file, when it has one
    if rejudge is None or chosen.status == "nothing_quantized":
        verdict = chosen  # already judged on the evaluation split (tuning on it was allowed explicitly), or never judged
        verdict.model_path = setup.final
    else:
        log(f"{name}: judging the chosen attempt ({len(excluded)} node(s) in float) on the evaluation samples the search never read")
        verdict = rejudge(setup.final)
        verdict.build = chosen.build
        search["verdict_on_tuning"] = chosen.status
        search["verified"] = _attempt_record(verdict, excluded, "verified", done.records[index]["changes"], done.records[index]["tensors_overridden"])
    verdict.search = search
    return verdict, chosen_options


Attempt = Callable[[StaticInt8Options, list[str], str, dict[str, Any]], VariantOutcome]


def _best_without_float(done: _Attempts, objective: str | None) -> int:
    """The attempt with no node in float that scores best: the setting later stages start from."""
    usable = [i for i, (trial, excluded) in enumerate(done.judged) if not excluded and trial.status in ("passed", "failed", "inconclusive")]
    return min(usable, key=lambda i: _score(done.judged[i][0], 0, objective))


def _search_stages(
    variant: StaticInt8Options,
    first: VariantOutcome,
    objective: str | None,
    attempt: Attempt,
    done: _Attempts,
    build: Build,
    feeds: Feeds,
    setup: SearchSetup,
    search: dict[str, Any],
    log: Callable[[str], None],
) -> tuple[str, list[NodeSensitivity], list[str]]:
    """Stages 1-6 (module docstring) after the recipe's own setting failed an accuracy gate; returns (conclusion, ranking, ranked on)."""
    fallback = variant.fallback
    assert fallback is not None
    target = current().target_cpu()  # with Ray: the bench node's, not this driver's
    settings, skipped = settings_to_try(variant, fallback.candidates, target)
    search["skipped"] = skipped
    for setting in settings:
        if attempt(setting.options, [], "settings", setting.changes).passed:
            return f"passed with setting {setting.changes} and no node in float", [], []
    base_index = _best_without_float(done, objective)
    base, base_outcome, base_changes = done.options[base_index], done.judged[base_index][0], done.records[base_index]["changes"]
    ranking, ranked_on, seconds = _ranking(base, base_outcome, build, feeds, setup.work_dir)
    search["ranking_seconds"] = round(seconds, 1)
    log(
        f"{first.name}: ranked {len(ranking)} quantized nodes of setting {base_changes or 'as recipe'} by added error"
        f" on {len(ranked_on)} {setup.tuning_name} samples in {seconds:.1f} s"
    )
    float_model = Path(base_outcome.build["prepared_model"])
    wanted = fallback.sensitive_overrides
    if wanted is not None:
        for count in wanted.nodes:
            overrides, unsafe = sensitive_overrides(base, ranking, count, wanted, float_model, target)
            if unsafe:
                search.setdefault("skipped", []).append({"changes": {"sensitive_overrides.weights_reduce_range": False}, "skipped": unsafe})
            if overrides == base.tensor_overrides:
                continue
            changes = {**base_changes, "sensitive_overrides": count}
            if attempt(base.model_copy(update={"tensor_overrides": overrides}), [], "overrides", changes).passed:
                return f"passed with per-tensor overrides on the {count} most sensitive node(s) and no node in float", ranking, ranked_on
        base_index = _best_without_float(done, objective)
        base, base_changes = done.options[base_index], done.records[base_index]["changes"]
    order = graph_order(float_model)
    units = units_of(ranking, fallback.unit, fallback.block_size, order)
    if fallback.pairs >= 1:
        _pairs(units[: fallback.pairs], base, base_changes, base_index, objective, attempt, done, search)
        if any(trial.passed for trial, _ in done.judged):
            return "an attempt of the pairs stage passed", ranking, ranked_on

    def rerank(index: int) -> list[list[str]]:
        """The nodes still quantized in attempt `index`'s model, ranked on it (the ranking samples again)."""
        trial, in_float = done.judged[index]
        reranked, _, seconds = _ranking(done.options[index], trial, build, feeds, setup.work_dir)
        search.setdefault("rerankings", []).append(
            {"attempt": index, "nodes_in_float": len(in_float), "ranked": len(reranked), "seconds": round(seconds, 1),
             "top": [n.node for n in reranked[:8]]}
        )  # fmt: skip
        log(f"{first.name}: re-ranked the {len(reranked)} nodes still quantized with {len(in_float)} in float in {seconds:.1f} s")
        return units_of(reranked, fallback.unit, fallback.block_size, order)

    conclusion, units = _units_in_float(units, base, base_changes, attempt, done, rerank if fallback.rerank else None)
    passing = [i for i, (trial, _) in enumerate(done.judged) if trial.passed]
    if passing and fallback.step_back:
        conclusion += _step_back(units, passing[-1], base_changes, attempt, done)
    return conclusion, ranking, ranked_on


def _pairs(
    top: list[list[str]], base: StaticInt8Options, changes: dict[str, Any], base_index: int, objective: str | None,
    attempt: Attempt, done: _Attempts, search: dict[str, Any],
) -> None:  # fmt: skip
    """The top units alone and in pairs, and how far each pair's objective is from the sum of its singles' effects."""

    def value(trial: VariantOutcome) -> float | None:
        v = _objective_value(trial, objective)
        return None if v is None or trial.status == "error" else v

    reference = value(done.judged[base_index][0])
    single = {i: value(attempt(base, unit, "pairs", changes)) for i, unit in enumerate(top)}
    interactions = []
    for i in range(len(top)):
        for j in range(i + 1, len(top)):
            pair = value(attempt(base, [*top[i], *top[j]], "pairs", changes))
            known = None not in (pair, single[i], single[j], reference)
            additive = single[i] + single[j] - reference if known else None  # type: ignore[operator]
            interactions.append(
                {"units": [top[i], top[j]], "objective": objective, "alone": [single[i], single[j]], "together": pair,
                 "if_additive": additive, "interaction": pair - additive if known else None}  # type: ignore[operator]
            )  # fmt: skip
    search["interactions"] = interactions


Rerank = Callable[[int], list[list[str]]]  # units ranked on attempt i's model (its float nodes are no candidates there)


def _units_in_float(
    units: list[list[str]], base: StaticInt8Options, changes: dict[str, Any], attempt: Attempt, done: _Attempts, rerank: Rerank | None = None
) -> tuple[str, list[list[str]]]:
    """1, 2, 4, ... of the most sensitive units in float (within max_nodes), until one passes or only speed/size fail.

    With `rerank`, each step after the first keeps the previous step's units in float and adds the units ranked most
    sensitive on the previous step's model. Returns (conclusion, the units in the order they were added, then the rest)."""
    fallback = base.fallback
    assert fallback is not None
    index_of = {tuple(excluded): i for i, (_, excluded) in enumerate(done.judged)}
    chosen: list[list[str]] = []  # the units of the previous step, in the order they were added

    def ordered() -> list[list[str]]:
        return [*chosen, *(u for u in units if u not in chosen)]

    for k in fallback.steps or default_steps(len(units)):
        ranked_on = None
        if rerank is not None and chosen:
            ranked_on = index_of.get(tuple(node for unit in chosen for node in unit)[: fallback.max_nodes])
            if ranked_on is not None:
                units = rerank(ranked_on)
        picks = ordered()[:k]
        excluded = [node for unit in picks for node in unit][: fallback.max_nodes]
        if not excluded:
            continue
        chosen = picks
        if tuple(excluded) in index_of:
            continue
        trial = attempt(base, excluded, "float", changes)
        index_of[tuple(excluded)] = len(done.judged) - 1
        if ranked_on is not None:
            done.records[-1]["ranked_on_attempt"] = ranked_on
        if trial.passed:
            return f"passed with {len(excluded)} node(s) in float", ordered()
        if trial.status == "nothing_quantized":
            return f"with {len(excluded)} node(s) in float nothing was quantized any more; an FP32 copy is not an INT8 variant", ordered()
        if trial.status != "error" and not _accuracy_failed(trial):
            failed = ", ".join(g.metric for g in trial.failed_gates)
            return f"accuracy held with {len(excluded)} node(s) in float, but {failed} failed; more float nodes only cost more", ordered()
        if len(excluded) >= fallback.max_nodes:
            break
    return f"no attempt passed within {fallback.max_nodes} node(s) in float", ordered()


def _step_back(units: list[list[str]], passed_index: int, changes: dict[str, Any], attempt: Attempt, done: _Attempts) -> str:
    """NNCF's accuracy control, backwards: return the least sensitive float units to INT8 while it still passes.

    The number kept is bisected between the largest count that failed and the one that passed (a handful of
    attempts instead of one per unit); every attempt is judged and recorded like the others."""
    kept = [unit for unit in units if set(unit) <= set(done.judged[passed_index][1])]
    base = done.options[passed_index].model_copy(update={"exclude_nodes": []})
    failed_counts = [len([u for u in units if set(u) <= set(excluded)]) for trial, excluded in done.judged if not trial.passed]
    low, high = max([c for c in failed_counts if c < len(kept)], default=0), len(kept)  # low fails (or is untried), high passes
    while high - low > 1:
        middle = (low + high) // 2
        if attempt(base, [node for unit in kept[:middle] for node in unit], "step_back", changes).passed:
            high = middle
        else:
            low = middle
    if high == len(kept):
        return "; stepping back returned no unit to INT8" if len(kept) > 1 else ""
    return f"; stepping back returned {len(kept) - high} unit(s) to INT8 ({high} unit(s) left in float)"
