"""The human summary: a Markdown table for stdout, summary.md and GITHUB_STEP_SUMMARY."""

from __future__ import annotations

from quant.fp16.report import summary_lines as fp16_summary_lines
from quant.metrics.catalogue import HEADLINE_METRICS, worst_over_outputs
from quant.outcome import VariantOutcome
from quant.report.tradeoff import tradeoff_markdown

SLICE_METRICS = ("ctc_exact_match_norm", "ctc_exact_match", "label_cer_delta", "label_cer_reference", "map_iou")


def _with_interval(outcome: VariantOutcome, metric: str, value: float) -> str:
    """`value [low, high] n=N` when the output holding that value measured an interval."""
    for output, metrics in outcome.metrics.items():
        estimate = outcome.estimates.get(output, {}).get(metric)
        if metrics.get(metric) == value and estimate is not None:
            return f"{value:.4g} {estimate.interval.describe()}"
    return f"{value:.4g}"


def _cell(text: str) -> str:
    """One Markdown table cell: a converter's multi-line error or a '|' must not break the table."""
    return " ".join(text.split()).replace("|", "/")


def _headline(outcome: VariantOutcome, one_value_outputs: frozenset[str]) -> str:
    parts = []
    for metric in HEADLINE_METRICS:
        # Cosine of one number is only its sign: no headline for a one-value output (a classifier's score).
        tables = [t for name, t in outcome.metrics.items() if not (metric.startswith("cosine") and name in one_value_outputs)]
        worst = worst_over_outputs(metric, tables)
        if worst is not None:
            parts.append(f"{metric} {_with_interval(outcome, metric, worst)}")
    return ", ".join(parts[:3]) or "—"


def _latency(outcome: VariantOutcome) -> str:
    latency = outcome.latency
    if latency is None:
        return "—"
    if latency.interval is None:
        return f"{latency.ratio:.3f}"
    return f"{latency.ratio:.3f} [{latency.interval.low:.3f}, {latency.interval.high:.3f}] {latency.rounds} rounds"


def _slice_lines(outcomes: list[VariantOutcome]) -> list[str]:
    """Per slice: each variant's headline metrics with interval and sample count."""
    rows = []
    for o in outcomes:
        for slice_name, outputs in o.slices.items():
            for output, estimates in outputs.items():
                shown = [f"{m} {estimates[m].value:.4g} {estimates[m].interval.describe()}" for m in SLICE_METRICS if m in estimates]
                if shown:
                    rows.append(f"| {o.name} | {slice_name} | {output} | {'; '.join(shown)} |")
    return ["", "Per slice:", "", "| variant | slice | output | metrics [95 % interval] |", "|---|---|---|---|", *rows] if rows else []


def summary_markdown(
    recipe_name: str,
    outcomes: list[VariantOutcome],
    reference_size: int,
    promoted: str | None,
    verdict: str,
    source: str = "FP32",
    one_value_outputs: frozenset[str] = frozenset(),
) -> str:
    """`source`: what the input model is (FP32, or FP16 when it came as FP16); `one_value_outputs`: outputs
    with one number per sample, whose cosine is no headline."""
    lines = [
        f"## quant: {recipe_name}",
        "",
        f"{source} model: {reference_size / 1e6:.2f} MB",
        "",
        "| variant | method | verdict | size MB (ratio) | latency ratio [95 % interval] | accuracy vs FP32 [95 % interval] n | failed gates |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        size = f"{o.size_bytes / 1e6:.2f} ({o.size_ratio:.2f})" if o.size_bytes and o.size_ratio else "—"
        verdict_cell = {"passed": "PASS", "failed": "FAIL", "error": "ERROR"}.get(o.status, o.status.replace("_", " ").upper())
        undecided = o.status in ("failed", "inconclusive")
        failed = "; ".join(g.describe() for g in [*o.failed_gates, *o.inconclusive_gates]) if undecided else (o.error or o.note or "")
        accuracy = _cell(_headline(o, one_value_outputs))
        lines.append(f"| {o.name} | {o.method} | {verdict_cell} | {size} | {_latency(o)} | {accuracy} | {_cell(failed)} |")
    lines += _slice_lines(outcomes)
    lines += ["", f"Result: {verdict}"]
    if promoted:
        lines.append(f"Released to: {promoted}")
    for o in outcomes:
        if o.search and o.search.get("sensitivity"):
            worst = ", ".join(f"{n['node']} ({n['op_type']}, {n['sqnr_db']:.1f} dB)" for n in o.search["sensitivity"][:5])
            lines.append(f"Most sensitive nodes of {o.name}: {worst}")
    for o in outcomes:
        if o.search and o.search.get("attempts") and o.search.get("kind") != "fp16_repair":
            lines += tradeoff_markdown(o.name, o.search)
    lines += fp16_summary_lines(outcomes)
    return "\n".join(lines) + "\n"
