"""report.html: one self-contained page (plots embedded as PNG) that opens from disk, no scripts."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

from quant.fp16.report import html_sections as fp16_sections
from quant.metrics.catalogue import accuracy_axis, worst_over_outputs
from quant.report.tradeoff import tradeoff_figure

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;max-width:1400px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border:1px solid #ccd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f8}.pass{background:#d9f2dc}.fail{background:#f9d6d5}.error{background:#fde8c8}.muted{color:#667}
.verdict{font-size:15px;padding:8px 12px;border-radius:6px;display:inline-block;margin:8px 0}
.plots img{max-width:100%;border:1px solid #eee;margin:4px}code{background:#f4f4f7;padding:1px 4px;border-radius:3px}
"""


def _escape(value: Any) -> str:
    return html.escape(str(value))


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return _escape(value) if value is not None else "—"


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def accuracy_metric(results: dict[str, Any]) -> str | None:
    """The most telling accuracy metric this run has (text agreement beats map IoU beats cosine)."""
    return accuracy_axis(m for v in results["variants"].values() for out in v.get("metrics", {}).values() for m in out)


def _worst(variant: dict[str, Any], metric: str) -> float | None:
    return worst_over_outputs(metric, variant.get("metrics", {}).values())


def _plots(results: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    images: list[tuple[str, str]] = []
    metric = accuracy_metric(results)
    variants = results["variants"]
    if metric:
        figure, axes = plt.subplots(figsize=(6.4, 4.2))
        for name, variant in variants.items():
            latency = (variant.get("latency") or {}).get("ratio")
            accuracy = _worst(variant, metric)
            if latency is None or accuracy is None:
                continue
            colour = {"passed": "#2e8b57", "failed": "#c0392b"}.get(variant["status"], "#e67e22")
            axes.scatter([latency], [accuracy], s=70, color=colour, zorder=3)
            axes.annotate(name, (latency, accuracy), textcoords="offset points", xytext=(6, 4), fontsize=9)
            for attempt in (variant.get("search") or {}).get("attempts", []):
                if attempt.get("latency_ratio") is not None and attempt.get(metric) is not None:
                    axes.scatter([attempt["latency_ratio"]], [attempt[metric]], s=18, color="#7f8c8d", marker="x", zorder=2)
        axes.axvline(1.0, color="#999", linestyle="--", linewidth=1)
        axes.scatter([1.0], [1.0], marker="*", s=140, color="#34495e", zorder=3)
        axes.annotate("FP32", (1.0, 1.0), textcoords="offset points", xytext=(6, -12), fontsize=9)
        axes.set_xlabel("latency / FP32 latency (lower is faster)")
        axes.set_ylabel(f"{metric} vs FP32")
        axes.set_title("Accuracy vs latency (green passed, red failed, x = fallback attempts)", fontsize=10)
        axes.grid(alpha=0.3)
        images.append(("Accuracy vs latency", _png(figure)))
        plt.close(figure)
    for name, variant in variants.items():
        search = variant.get("search") or {}
        curve = tradeoff_figure(name, search) if search.get("kind") != "fp16_repair" else None
        if curve is not None:
            images.append((f"Trade-off curve of {name}'s search: every attempt on the tuning split, the chosen one on evaluation", _png(curve)))
            plt.close(curve)
    for output in sorted({o for v in variants.values() for o in v.get("distributions", {})}):
        series = {name: v["distributions"][output] for name, v in variants.items() if output in v.get("distributions", {})}
        keys = [k for k in ("cosine", "snr_db", "map_iou") if any(k in s for s in series.values())]
        if not keys:
            continue
        figure, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.4), squeeze=False)
        for axis, key in zip(axes[0], keys):
            for name, values in series.items():
                if values.get(key):
                    axis.hist(values[key], bins=30, alpha=0.5, label=name)
            axis.set_title(f"{output}: per-sample {key}", fontsize=10)
            axis.legend(fontsize=8)
        images.append((f"Per-sample error distribution of {output}", _png(figure)))
        plt.close(figure)
    return images


def _gate_cell(gate: dict[str, Any]) -> str:
    bound = " ".join(
        p for p in (f"≥ {gate['min']:g}" if gate.get("min") is not None else "", f"≤ {gate['max']:g}" if gate.get("max") is not None else "") if p
    )
    if gate.get("max_regression") is not None:
        bound += f" regress ≤ {gate['max_regression']:g}"
    if gate.get("must_clear") == "interval":
        bound += ", whole interval"
    css = "pass" if gate["passed"] else ("error" if gate.get("verdict") == "inconclusive" else "fail")
    where = f" [{_escape(gate['output'])}]" if gate.get("output") else ""
    reason = f"<br><span class=muted>{_escape(gate['reason'])}</span>" if gate.get("reason") else ""
    observed = f"<b>{_number(gate.get('observed'))}</b>{_interval(gate.get('interval'))}"
    return f"<td class={css}>{_escape(gate['metric'])}{where}: {observed} <span class=muted>({bound})</span>{reason}</td>"


def _interval(interval: dict[str, Any] | None) -> str:
    if not interval:
        return ""
    return f" <span class=muted>[{_number(interval['low'])}, {_number(interval['high'])}] n={interval['samples']}</span>"


def _slices_section(results: dict[str, Any]) -> str:
    """Per slice (clean, blur, ...): every variant's ratio metrics with their intervals and sample counts."""
    rows = []
    for name, v in results["variants"].items():
        for slice_name, outputs in (v.get("slices") or {}).items():
            for output, metrics in outputs.items():
                cells = "; ".join(f"{_escape(m)} <b>{_number(e['value'])}</b>{_interval(e)}" for m, e in metrics.items())
                rows.append(f"<tr><td>{_escape(name)}</td><td>{_escape(slice_name)}</td><td>{_escape(output)}</td><td>{cells}</td></tr>")
    if not rows:
        return ""
    header = "<tr><th>variant</th><th>slice</th><th>output</th><th>metrics [95 % interval] n</th></tr>"
    return f"<h2>Per slice</h2><table>{header}{''.join(rows)}</table>"


def _variant_table(results: dict[str, Any]) -> str:
    rows = []
    for name, v in results["variants"].items():
        css = {"passed": "pass", "failed": "fail"}.get(v["status"], "error")
        latency = v.get("latency") or {}
        load = latency.get("load") or {}
        machine = f"load {load.get('load_1m_before')}→{load.get('load_1m_after')} on {load.get('cpus')} CPUs" if load else ""
        measured = f"{latency.get('rounds')} rounds, {machine}" if load else ""
        gates = "".join(_gate_cell(g) for g in v.get("gates", [])) or f"<td class=error>{_escape(v.get('error') or v.get('note') or '')}</td>"
        size = f"{v['size_bytes'] / 1e6:.2f} MB ({v['size_ratio']:.2f}×)" if v.get("size_bytes") else "—"
        rows.append(
            f"<tr><td><b>{_escape(name)}</b><br><span class=muted>{_escape(v['method'])}</span></td>"
            f"<td class={css}>{v['status'].replace('_', ' ').upper()}</td>"
            f"<td>{size}</td><td>{_number(latency.get('ratio'), 3)}×{_interval(latency.get('interval'))} <span class=muted>"
            f"({_number(latency.get('variant_ms'), 3)} vs {_number(latency.get('reference_ms'), 3)} ms; {measured})</span></td>{gates}</tr>"
        )
    return (
        "<table><tr><th>variant</th><th>verdict</th><th>size</th><th>latency vs FP32</th><th colspan=20>gates (observed, threshold)</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _search_sections(results: dict[str, Any]) -> str:
    parts = []
    for name, v in results["variants"].items():
        search = v.get("search")
        if not search:
            continue
        rows = [(str(i), a) for i, a in enumerate(search.get("attempts", []))]
        rows += [(f"{search.get('chosen_attempt')} verified", search["verified"])] if search.get("verified") else []
        attempts = "".join(
            f"<tr class={'pass' if a.get('passed') else 'fail'}><td>{_escape(label)}</td><td>{_escape(a.get('split'))}</td>"
            f"<td>{_escape(a.get('stage', ''))}</td><td>{_escape(', '.join(f'{k}={v}' for k, v in (a.get('changes') or {}).items()))}</td>"
            f"<td>{a.get('tensors_overridden', 0)}</td><td>{a['nodes_in_float']}</td><td>{_number(a.get('latency_ratio'), 3)}</td>"
            + "".join(f"<td>{_number(a.get(m))}</td>" for m in search.get("metrics", []))
            + f"<td>{_escape(', '.join(a.get('failed_gates', [])))}</td></tr>"
            for label, a in rows
        )
        header = "".join(f"<th>{_escape(m)}</th>" for m in search.get("metrics", []))
        ranking = "".join(
            f"<tr><td>{i + 1}</td><td>{_escape(n['node'])}</td><td>{_escape(n['op_type'])}</td><td>{_number(n.get('sqnr_db'), 3)}</td></tr>"
            for i, n in enumerate(search.get("sensitivity", [])[:20])
        )
        parts.append(
            f"<h2>{'FP16 repair search' if search.get('kind') == 'fp16_repair' else 'Fallback search'}: {_escape(name)}</h2>"
            f"<p>{_escape(search.get('conclusion', ''))}</p>"
            f"<table><tr><th>#</th><th>judged on</th><th>stage</th><th>setting</th><th>tensor overrides</th><th>nodes kept in float</th>"
            f"<th>latency ratio</th>{header}<th>failed gates</th></tr>{attempts}</table>"
            + (f"<h3>Most sensitive nodes</h3><table><tr><th>#</th><th>node</th><th>op</th><th>SQNR dB</th></tr>{ranking}</table>" if ranking else "")
        )
    return "".join(parts)


def _regression_section(results: dict[str, Any]) -> str:
    regression = results.get("regression")
    if not regression:
        return ""
    rows = "".join(
        f"<tr><td>{_escape(variant)}</td><td>{_escape(metric)}</td><td>{_number(d['previous'])}</td><td>{_number(d['current'])}</td><td>{_number(d['change'])}</td></tr>"
        for variant, metrics in regression.get("variants", {}).items()
        for metric, d in metrics.items()
    )
    return (
        f"<h2>Against the last release ({_escape(regression['previous_version'])})</h2>"
        f"<table><tr><th>variant</th><th>metric</th><th>previous</th><th>now</th><th>change</th></tr>{rows}</table>"
    )


def render_html(results: dict[str, Any]) -> str:
    """The report page for a results.json document."""
    verdict_css = {0: "pass", 4: "error"}.get(results.get("exit_code"), "fail")
    environment = results.get("environment", {})
    plots = "".join(
        f"<figure><figcaption>{_escape(title)}</figcaption><img alt='{_escape(title)}' src='{uri}'></figure>" for title, uri in _plots(results)
    )
    provenance = {
        "recipe": f"{results['recipe']['name']} ({results['recipe']['file']}, sha256 {results['recipe']['sha256'][:16]}…)",
        "model": f"{results['model']['file']} (sha256 {results['model']['sha256'][:16]}…, "
        f"{results['model']['size_bytes'] / 1e6:.2f} MB, opset {results['model']['opset']})",
        "calibration": (results["data"].get("calibration") or {}).get("fingerprint", "—"),
        "evaluation": f"{len(results['data']['evaluation']['samples'])} samples, fingerprint {results['data']['evaluation']['fingerprint'][:16]}…",
        "cpu": json.dumps(environment.get("cpu", {})),
        "libraries": ", ".join(f"{k} {v}" for k, v in environment.get("libraries", {}).items()),
        "run": f"{results['started']} → {results['finished']}",
        "released to": (results.get("promotion") or {}).get("release") or "nothing released",
    }
    provenance_rows = "".join(f"<tr><th>{_escape(k)}</th><td>{_escape(v)}</td></tr>" for k, v in provenance.items())
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>quant report: {_escape(results['recipe']['name'])}</title><style>{STYLE}</style></head><body>"
        f"<h1>quant report: {_escape(results['recipe']['name'])}</h1>"
        f"<div class='verdict {verdict_css}'>{_escape(results['verdict'])}</div>"
        f"<h2>Variants</h2>{_variant_table(results)}"
        f"<h2>Trade-off and error distributions</h2><div class=plots>{plots or '<p class=muted>matplotlib is not installed: no plots.</p>'}</div>"
        f"{_slices_section(results)}{fp16_sections(results)}{_search_sections(results)}{_regression_section(results)}"
        f"<h2>Provenance</h2><table>{provenance_rows}</table>"
        "</body></html>\n"
    )
