"""Every report file a run leaves: results.json, summary.md and report.html in the run folder, the
--json and --junit files, and the GitHub step summary. The CLI decides where; this module writes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quant.report.html import render_html
from quant.report.junit import render_junit
from quant.results import RunResults


def write_run_reports(run_dir: Path, results: RunResults, summary: str) -> None:
    """results.json, summary.md and report.html in the run folder; the summary also to GITHUB_STEP_SUMMARY when set."""
    document = results.to_dict()
    _write_text(run_dir / "results.json", results.to_json())
    _write_text(run_dir / "summary.md", summary)
    _write_text(run_dir / "report.html", render_html(document))
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with _naming(Path(step_summary)), open(step_summary, "a", encoding="utf-8") as handle:
            handle.write(summary + "\n")


def write_junit(path: Path, documents: list[RunResults]) -> None:
    """One test case per variant x gate, a suite per recipe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text(path, render_junit([d.to_dict() for d in documents]))


def write_json(path: Path, documents: list[RunResults]) -> None:
    """results.json again (one recipe), or a JSON list of them (several)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = documents[0].to_dict() if len(documents) == 1 else [d.to_dict() for d in documents]
    _write_text(path, json.dumps(data, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    with _naming(path):
        path.write_text(text, encoding="utf-8")


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A failed write() (disk full, quota) raises an OSError without a file name; give it the file's, for the message."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise
