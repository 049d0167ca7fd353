"""A fallback search's trade-off curve: every attempt's accuracy against its latency, with the split it was
judged on, as a Markdown table (summary.md) and a matplotlib figure (report.html).

The attempts were judged on the tuning split; the chosen one was judged again on the evaluation split
(`verified`), and that row is the variant's verdict. The Pareto front (no other attempt both faster and
more accurate) is the measured curve a recipe author chooses a latency budget from.
"""

from __future__ import annotations

from typing import Any

from quant.metrics.catalogue import accuracy_axis, badness


def _rows(search: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [(str(index), attempt) for index, attempt in enumerate(search.get("attempts", []))]
    if search.get("verified"):
        rows.append((f"{search.get('chosen_attempt')} → verified", search["verified"]))
    return rows


def axes_of(search: dict[str, Any]) -> list[str]:
    """The metrics the curve plots: the search's objective and the agreement metric, when attempts have them."""
    present = [m for m in search.get("metrics", [])]
    agreement = accuracy_axis(present)
    objective = search.get("objective")
    return list(dict.fromkeys(m for m in (objective, agreement) if m and m in present))


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (smaller is better on both), by the first axis."""
    front = [i for i, (x, y) in enumerate(points) if not any((u <= x and v <= y) and (u, v) != (x, y) for u, v in points)]
    return sorted(front, key=lambda i: points[i])


def _changes(attempt: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in (attempt.get("changes") or {}).items()) or "recipe's"


def _stage(attempt: dict[str, Any]) -> str:
    ranked_on = attempt.get("ranked_on_attempt")
    stage = str(attempt.get("stage", "float"))
    return f"{stage}, re-ranked on #{ranked_on}" if ranked_on is not None else stage


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, int | float) else "—"


def tradeoff_markdown(variant: str, search: dict[str, Any]) -> list[str]:
    """The trade-off table of one variant's search, every attempt with the split it was judged on."""
    metrics = axes_of(search)
    header = "| # | split | stage | setting | tensor overrides | nodes in float | latency ratio [95 %] | " + " | ".join(metrics) + " | verdict |"
    lines = ["", f"Trade-off of {variant}'s search (each attempt judged on the split named; the chosen one verified on evaluation):", ""]
    lines += [header, "|" + "---|" * (7 + len(metrics))]
    for label, a in _rows(search):
        interval = a.get("latency_interval")
        latency = _number(a.get("latency_ratio"), 3) + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
        latency = "not measured" if a.get("latency_note") else latency
        values = " | ".join(_number(a.get(m)) for m in metrics)
        lines.append(
            f"| {label} | {a.get('split') or '—'} | {_stage(a)} | {_changes(a)} | {a.get('tensors_overridden', 0)} | "
            f"{a['nodes_in_float']} | {latency} | {values} | {a['status']} |"
        )
    if any(a.get("latency_note") for a in search.get("attempts", [])):
        lines.append(
            "Latency not measured: the attempt had already failed an accuracy or size gate, so its speed could not change "
            "its verdict (`fallback.latency: every_attempt` measures every attempt)."
        )
    for skipped in search.get("skipped", []):
        lines.append(f"Skipped {skipped['changes']}: {skipped['skipped']}")
    for again in search.get("rerankings", []):
        top = ", ".join(again["top"][:4])
        in_float = again["nodes_in_float"]
        lines.append(f"Re-ranked on attempt #{again['attempt']}'s model ({in_float} node(s) in float, {again['ranked']} ranked): {top}")
    return lines


def tradeoff_figure(variant: str, search: dict[str, Any]) -> Any | None:
    """One panel per curve metric: attempts (tuning) as dots numbered by attempt, the Pareto front as a line,
    the chosen attempt's evaluation verdict as a star. None without matplotlib or without latencies."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    metrics = axes_of(search)
    attempts = search.get("attempts", [])
    if not metrics or not any(a.get("latency_ratio") is not None for a in attempts):
        return None
    figure, panels = plt.subplots(1, len(metrics), figsize=(6.0 * len(metrics), 4.2), squeeze=False)
    for axis, metric in zip(panels[0], metrics):
        judged = [(i, a) for i, a in enumerate(attempts) if a.get("latency_ratio") is not None and a.get(metric) is not None]
        for index, a in judged:
            colour = "#2e8b57" if a.get("passed") else "#c0392b"
            axis.scatter([a["latency_ratio"]], [a[metric]], s=30, color=colour, zorder=3)
            axis.annotate(str(index), (a["latency_ratio"], a[metric]), textcoords="offset points", xytext=(4, 3), fontsize=8)
        points = [(a["latency_ratio"], badness(metric, a[metric])) for _, a in judged]
        front = [judged[i][1] for i in pareto(points)]
        axis.plot([a["latency_ratio"] for a in front], [a[metric] for a in front], color="#34495e", linewidth=1, label="Pareto front (tuning)")
        verified = search.get("verified") or {}
        if verified.get("latency_ratio") is not None and verified.get(metric) is not None:
            axis.scatter([verified["latency_ratio"]], [verified[metric]], marker="*", s=160, color="#2980b9", zorder=4, label="chosen, on evaluation")
        axis.set_xlabel("latency / FP32 latency (lower is faster)")
        axis.set_ylabel(metric)
        axis.set_title(f"{variant}: {metric} vs latency per attempt (green passed on tuning)", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return figure
