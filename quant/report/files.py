"""Every report file a run leaves: results.json, summary.md and report.html in the run folder, the
--json and --junit files, and the GitHub step summary. The CLI decides where; this module writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from quant.report.html import render_html
from quant.report.junit import render_junit
from quant.results import RunResults


def write_run_reports(run_dir: Path, results: RunResults, summary: str) -> None:
    """results.json, summary.md and report.html in the run folder; the summary also to GITHUB_STEP_SUMMARY when set."""
    document = results.to_dict()
    (run_dir / "results.json").write_text(results.to_json(), encoding="utf-8")
    (run_dir / "summary.md").write_text(summary, encoding="utf-8")
    (run_dir / "report.html").write_text(render_html(document), encoding="utf-8")
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as handle:
            handle.write(summary + "\n")


def write_junit(path: Path, documents: list[RunResults]) -> None:
    """One test case per variant x gate, a suite per recipe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_junit([d.to_dict() for d in documents]), encoding="utf-8")


def write_json(path: Path, documents: list[RunResults]) -> None:
    """results.json again (one recipe), or a JSON list of them (several)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = documents[0].to_dict() if len(documents) == 1 else [d.to_dict() for d in documents]
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
