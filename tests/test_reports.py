"""Reports for people and CI: HTML (rendered in headless Chromium), JUnit, regression vs the last release, schema and docs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import onnx
import pytest

from quant.recipe.docs import recipe_json_schema, recipes_markdown
from tests.conftest import REPO, base_recipe, run_cli, tiny_ctc_model, write_images, write_recipe

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same recipe run twice: v1, then v2 with a regression gate against v1."""
    root = tmp_path_factory.mktemp("reports")
    onnx.save(tiny_ctc_model(), str(root / "tiny.onnx"))
    write_images(root / "calib", 12, seed=1, prefix="c")
    write_images(root / "eval", 10, seed=2, prefix="e")
    variants = {"fp16": {"method": "fp16"}, "dyn": {"method": "dynamic_int8", "op_types": ["MatMul"]}}
    gates = [{"metric": "cosine", "min": 0.9}, {"metric": "ctc_exact_match", "max_regression": 0.05}]
    path = write_recipe(root, base_recipe(root / "tiny.onnx", root / "calib", root / "eval", variants=variants, gates=gates))
    first = run_cli("--recipe", str(path), "--out", str(root / "run1"), "--junit", str(root / "run1.xml"), cwd=root)
    assert first.returncode == 0, first.stderr
    summary_file = root / "step-summary.md"
    second = run_cli(
        "--recipe",
        str(path),
        "--out",
        str(root / "run2"),
        "--junit",
        str(root / "run2.xml"),
        cwd=root,
        env={"GITHUB_STEP_SUMMARY": str(summary_file)},
    )
    assert second.returncode == 0, second.stderr
    return {"root": root, "run1": root / "run1", "run2": root / "run2", "summary": summary_file}


def test_versions_increase_and_never_overwrite(two_runs: dict[str, Path]) -> None:
    release = two_runs["root"] / "releases" / "tiny"
    assert sorted(p.name for p in release.iterdir()) == ["v1", "v2"]
    first = json.loads((release / "v1" / "manifest.json").read_text())
    assert first["version"] == "v1" and "ctc_exact_match" in first["variants"]["fp16"]["metrics"]["probs"]


def test_second_run_compares_with_the_last_release(two_runs: dict[str, Path]) -> None:
    first = json.loads((two_runs["run1"] / "results.json").read_text())
    second = json.loads((two_runs["run2"] / "results.json").read_text())
    assert first["regression"] is None
    assert second["regression"]["previous_version"] == "v1"
    assert set(second["regression"]["variants"]) == {"fp16", "dyn"}
    gate = next(g for g in second["variants"]["fp16"]["gates"] if g["max_regression"] is not None)
    assert gate["passed"] and gate["previous"] == pytest.approx(gate["observed"])
    first_gate = next(g for g in first["variants"]["fp16"]["gates"] if g["max_regression"] is not None)
    assert "no earlier release" in first_gate["reason"]


def test_junit_has_one_case_per_variant_and_gate(two_runs: dict[str, Path]) -> None:
    suite = ET.parse(two_runs["root"] / "run2.xml").getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert suite.get("tests") == "4" and suite.get("failures") == "0" and len(cases) == 4
    assert {c.get("classname") for c in cases} == {"quant.tiny.fp16", "quant.tiny.dyn"}


def test_github_step_summary_is_appended(two_runs: dict[str, Path]) -> None:
    assert "| fp16 | fp16 | PASS |" in two_runs["summary"].read_text()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_report_renders_in_headless_chromium(two_runs: dict[str, Path]) -> None:
    report = two_runs["run2"] / "report.html"
    page = report.read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained, opens from disk
    assert "Accuracy vs latency" in page and "data:image/png;base64," in page and "Against the last release (v1)" in page
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run should have installed it")
        pytest.skip("chromium not installed (CI installs it)")
    screenshot = two_runs["root"] / "report.png"
    profile = two_runs["root"] / "chromium-profile"
    shot = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1400,1600",
            f"--screenshot={screenshot}",
            "--enable-logging=stderr",
            "--v=0",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert screenshot.is_file() and screenshot.stat().st_size > 20_000, shot.stderr[-2000:]
    assert "CONSOLE" not in shot.stderr and "Uncaught" not in shot.stderr
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert "quant report: tiny" in dom and "<table>" in dom and dom.count("<img") >= 2


def test_committed_schema_is_up_to_date() -> None:
    committed = json.loads((REPO / "recipes" / "recipe.schema.json").read_text())
    assert committed == recipe_json_schema(), "run: quantize schema > recipes/recipe.schema.json"


def test_committed_recipe_docs_are_up_to_date() -> None:
    assert (REPO / "docs" / "recipes.md").read_text() == recipes_markdown(), "run: quantize schema --markdown > docs/recipes.md"


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "recipes").glob("*.yaml")))
def test_shipped_recipes_point_editors_at_the_schema_and_validate(recipe: str) -> None:
    path = REPO / "recipes" / recipe
    assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=recipe.schema.json"
    done = run_cli("--recipe", str(path), "--validate", cwd=path.parent)
    assert done.returncode == 0, done.stderr
