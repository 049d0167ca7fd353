"""The human summary: a Markdown table for stdout, summary.md and GITHUB_STEP_SUMMARY."""

from __future__ import annotations

from quant.metrics.catalogue import HEADLINE_METRICS, worst_over_outputs
from quant.outcome import VariantOutcome


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def _headline(outcome: VariantOutcome) -> str:
    parts = []
    for metric in HEADLINE_METRICS:
        worst = worst_over_outputs(metric, outcome.metrics.values())
        if worst is not None:
            parts.append(f"{metric} {worst:.4g}")
    return ", ".join(parts[:3]) or "—"


def summary_markdown(recipe_name: str, outcomes: list[VariantOutcome], reference_size: int, promoted: str | None, verdict: str) -> str:
    lines = [
        f"## quant: {recipe_name}",
        "",
        f"FP32 model: {reference_size / 1e6:.2f} MB",
        "",
        "| variant | method | verdict | size MB (ratio) | latency ratio | accuracy vs FP32 | failed gates |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        size = f"{o.size_bytes / 1e6:.2f} ({o.size_ratio:.2f})" if o.size_bytes and o.size_ratio else "—"
        latency = _fmt(o.latency.ratio if o.latency else None)
        verdict_cell = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "nothing_quantized": "NOTHING QUANTIZED"}[o.status]
        failed = "; ".join(g.describe() for g in o.failed_gates) if o.status == "failed" else (o.error or o.note or "")
        lines.append(f"| {o.name} | {o.method} | {verdict_cell} | {size} | {latency} | {_headline(o)} | {failed.replace('|', '/')} |")
    lines += ["", f"Result: {verdict}"]
    if promoted:
        lines.append(f"Released to: {promoted}")
    for o in outcomes:
        if o.search and o.search.get("sensitivity"):
            worst = ", ".join(f"{n['node']} ({n['op_type']}, {n['sqnr_db']:.1f} dB)" for n in o.search["sensitivity"][:5])
            lines.append(f"Most sensitive nodes of {o.name}: {worst}")
    return "\n".join(lines) + "\n"
