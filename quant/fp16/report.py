"""How the FP16 pre-flight shows in the summary and in report.html: what was kept in FP32 and why, and the scan's
riskiest tensors with their headroom (65504 / |x|max)."""

from __future__ import annotations

import html
from typing import Any

from quant.outcome import VariantOutcome


def _headroom(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _rounding(ranking: dict[str, Any]) -> str:
    cost = "cached" if ranking.get("cache_hit") else f"{ranking['seconds']:.1f} s"
    top = ", ".join(f"{c['node']} ({c['share']:.0%})" for c in ranking.get("top", [])[:5])
    return f"{ranking['nodes_measured']} weighted nodes on {ranking['samples']} {ranking['split']} samples ({cost}); first per value kept: {top}"


def summary_lines(outcomes: list[VariantOutcome]) -> list[str]:
    """One paragraph per variant that ran the pre-flight."""
    lines = []
    for outcome in outcomes:
        preflight = outcome.build.get("fp16_preflight")
        if not preflight:
            continue
        cost = "cached" if preflight.get("cache_hit") else f"{preflight['seconds']:.1f} s"
        kept = outcome.build.get("kept_fp32_reasons", {})
        lines.append(
            f"FP16 pre-flight of {outcome.name} ({preflight['split']} split, {preflight['samples']} samples, {cost}): "
            f"{len(preflight.get('flagged_nodes', []))} node(s) flagged, {len(kept)} kept in FP32."
        )
        lines += [f"- kept in FP32: {node} — {why}" for node, why in list(kept.items())[:10]]
        for label, kinds in (("tensors", ("activation", "initializer_overflow")), ("inside reductions (reported only)", ("accumulator",))):
            risky = [f for f in preflight.get("findings", []) if f["kind"] in kinds and f.get("headroom") is not None][:3]
            if risky:
                lines.append(f"- lowest headroom, {label}: " + ", ".join(f"{f['tensor']} ({f['op_type']}) {_headroom(f['headroom'])}" for f in risky))
        rounding = outcome.build.get("fp16_rounding")
        if rounding:
            lines.append(f"- weight-rounding ranking: {_rounding(rounding)}")
        if outcome.search and outcome.search.get("kind") == "fp16_repair":
            lines.append(f"- repair: {outcome.search['conclusion']} ({outcome.search['split']})")
    return lines


def html_sections(results: dict[str, Any]) -> str:
    parts = []
    escape = html.escape
    for name, variant in results["variants"].items():
        build = variant.get("build") or {}
        preflight = build.get("fp16_preflight")
        if not preflight:
            continue
        kept = "".join(f"<tr><td>{escape(node)}</td><td>{escape(why)}</td></tr>" for node, why in build.get("kept_fp32_reasons", {}).items())
        findings = "".join(
            f"<tr class={'fail' if f['flagged'] else ''}><td>{escape(f['kind'])}</td><td>{escape(f['tensor'])}</td><td>{escape(f['op_type'])}</td>"
            f"<td>{f['abs_max']:.4g}</td><td>{_headroom(f['headroom'])}</td><td>{'yes' if f['flagged'] else ''}</td><td>{escape(f['why'])}</td></tr>"
            for f in preflight.get("findings", [])
        )
        search = variant.get("search") or {}
        cost = "cached" if preflight.get("cache_hit") else f"{preflight['seconds']:.1f} s"
        parts.append(
            f"<h2>FP16 pre-flight: {escape(name)}</h2>"
            f"<p>Scanned on the {escape(preflight['split'])} split "
            f"({preflight['samples']} samples, {preflight['tensors_observed']} tensors, {cost}); "
            f"flagged when headroom = 65504 / |x|max is below {preflight['headroom_threshold']:g}. "
            f"{escape(search.get('conclusion', ''))} {escape(search.get('split', ''))}</p>"
            + (f"<p>Weight-rounding ranking: {escape(_rounding(build['fp16_rounding']))}</p>" if build.get("fp16_rounding") else "")
            + (f"<h3>Kept in FP32</h3><table><tr><th>node</th><th>why</th></tr>{kept}</table>" if kept else "<p>Nothing kept in FP32.</p>")
            + f"<h3>Riskiest tensors ({preflight['findings_total']} findings)</h3><table><tr><th>kind</th><th>tensor</th><th>op</th><th>|x|max</th>"
            f"<th>headroom</th><th>flagged</th><th>why</th></tr>{findings}</table>"
        )
    return "".join(parts)
