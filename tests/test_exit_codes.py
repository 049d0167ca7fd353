"""The CI contract's exit codes, each reached for real: 0 pass, 1 gate failed, 2 bad input, 3 internal
error (a bug: here an unexpected exception raised by the test point QUANT_TEST_FAIL_AT inside the run),
130 interrupted. A bug or an interruption never leaves a release, a half-release or a staging folder."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from quant.cli import _internal_error
from quant.recipe.docs import recipes_markdown
from tests.conftest import base_recipe, run_cli, write_recipe

INTERNAL_LINE = re.compile(r"^quantize: error: internal error \(InjectedFailure: QUANT_TEST_FAIL_AT=(\w+)\); traceback written to (\S+)$")


def _release_entries(root: Path) -> list[str]:
    folder = root / "releases" / "tiny"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_bug_before_anything_is_built_exits_3_and_says_where_the_traceback_is(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"]))
    done = run_cli("--recipe", str(path), "--out", str(root / "run"), "--quiet", cwd=root, env={"QUANT_TEST_FAIL_AT": "reference"})
    assert done.returncode == 3, done.stderr
    lines = done.stderr.splitlines()
    match = INTERNAL_LINE.match(lines[0]) if len(lines) == 1 else None
    assert match and match.group(1) == "reference", done.stderr
    traceback_file = Path(match.group(2))
    try:
        text = traceback_file.read_text()
        assert text.startswith("Traceback") and "pause_point" in text and "InjectedFailure" in text
    finally:
        traceback_file.unlink()
    assert done.stdout == "" and not (root / "run" / "results.json").exists() and _release_entries(root) == []


def test_a_long_internal_error_is_quoted_to_200_characters_and_written_whole(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's promise for exit 3: the line quotes the error's first 200 characters, the file has all of it."""
    message = "".join(chr(ord("a") + i % 26) for i in range(500))
    with pytest.raises(SystemExit) as exited:
        _internal_error(RuntimeError(message))
    line = capsys.readouterr().err.strip()
    match = re.fullmatch(r"quantize: error: internal error \(RuntimeError: (\w+)\); traceback written to (\S+)", line)
    assert exited.value.code == 3 and match, line
    traceback_file = Path(match.group(2))
    try:
        assert match.group(1) == message[:200] and message in traceback_file.read_text()
    finally:
        traceback_file.unlink()


def test_verbose_puts_the_traceback_of_a_bug_on_stderr(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"]))
    done = run_cli("--recipe", str(path), "--out", str(root / "run"), "--verbose", cwd=root, env={"QUANT_TEST_FAIL_AT": "evaluation"})
    assert done.returncode == 3
    assert "Traceback (most recent call last)" in done.stderr and done.stderr.rstrip().splitlines()[-1].startswith("quantize: error: internal error")
    Path(INTERNAL_LINE.match(done.stderr.rstrip().splitlines()[-1]).group(2)).unlink()  # type: ignore[union-attr]


def test_a_bug_with_the_release_staged_exits_3_and_leaves_no_release(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"]))
    assert run_cli("--recipe", str(path), "--out", str(root / "run0"), "--quiet", cwd=root).returncode == 0
    v1 = {p.name: p.read_bytes() for p in (root / "releases" / "tiny" / "v1").iterdir()}
    done = run_cli("--recipe", str(path), "--out", str(root / "run"), "--quiet", cwd=root, env={"QUANT_TEST_FAIL_AT": "promotion"})
    assert done.returncode == 3, done.stderr
    Path(INTERNAL_LINE.match(done.stderr.strip()).group(2)).unlink()  # type: ignore[union-attr]
    # Staged in full when the bug struck: the staging folder is gone, v2 never appeared, v1 is untouched.
    assert _release_entries(root) == ["v1"]
    assert {p.name: p.read_bytes() for p in (root / "releases" / "tiny" / "v1").iterdir()} == v1


def test_the_worst_recipe_decides_the_exit_code(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    passing = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], name="passes"), "passes.yaml")
    too_small = [{"metric": "size_ratio", "max": 0.01}]
    failing = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], name="fails", gates=too_small), "fails.yaml")
    reports = ["--junit", str(root / "ci" / "junit" / "all.xml"), "--json", str(root / "ci" / "json" / "all.json")]  # folders made, parents too
    for order in ((failing, passing), (passing, failing)):
        done = run_cli(*(a for r in order for a in ("--recipe", str(r))), "--out", str(root / "runs"), "--quiet", *reports, cwd=root)
        assert done.returncode == 1, done.stderr
        assert "| fp16 | fp16 | PASS |" in done.stdout and "| fp16 | fp16 | FAIL |" in done.stdout
        # One report for the invocation: a JUnit suite and a JSON document per recipe, in the order given.
        suites = ET.parse(root / "ci" / "junit" / "all.xml").getroot().findall("testsuite")
        documents = json.loads((root / "ci" / "json" / "all.json").read_text())
        names = [Path(r).stem for r in order]
        assert [d["recipe"]["name"] for d in documents] == names and len(suites) == 2
        assert all(json.loads((root / "runs" / name / "results.json").read_text())["recipe"]["name"] == name for name in names)  # a folder each
    alone = run_cli("--recipe", str(passing), "--out", str(root / "alone"), "--quiet", "--json", str(root / "alone.json"), cwd=root)
    assert alone.returncode == 0, alone.stderr
    assert json.loads((root / "alone.json").read_text())["recipe"]["name"] == "passes"  # one recipe: the document itself


def test_schema_markdown_prints_the_recipe_reference(tmp_path: Path) -> None:
    done = run_cli("schema", "--markdown", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == recipes_markdown()


def test_one_bad_recipe_among_several_exits_2_before_any_work(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    good = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], name="good"), "good.yaml")
    bad = write_recipe(root, {**base_recipe(workspace["model"], workspace["calib"], workspace["eval"]), "colour": "red"}, "bad.yaml")
    done = run_cli("--recipe", str(good), "--recipe", str(bad), "--out", str(root / "runs"), cwd=root)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "bad.yaml" in done.stderr and "colour" in done.stderr
    assert not (root / "runs").exists() and not (root / "releases").exists()


def test_an_interrupted_run_exits_130_and_releases_nothing(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"]))
    marker = root / "paused"
    env = {**os.environ, "QUANT_TEST_PAUSE_AT": "promotion", "QUANT_TEST_PAUSE_FILE": str(marker)}
    # stderr to a file, not a pipe: a process the run started that outlives it (a multiprocessing helper) would hold
    # a pipe open and make communicate() wait for it, though the run itself has exited.
    errors = root / "stderr.txt"
    with errors.open("w") as stderr_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "quant.cli", "--recipe", str(path), "--out", str(root / "run"), "--quiet"],
            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=stderr_file, text=True,
        )
        deadline = time.monotonic() + 300
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), errors.read_text() if process.poll() is not None else "never paused"
        os.kill(int(marker.read_text()), signal.SIGINT)  # Ctrl-C with the release staged
        process.wait(timeout=120)
    stderr = errors.read_text()
    assert process.returncode == 130, stderr
    assert stderr.strip() == "quantize: error: interrupted; nothing was released"
    assert _release_entries(root) == []


def test_without_out_the_run_goes_to_runs_slash_the_recipe_name(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"]))
    done = run_cli("--recipe", str(path), "--quiet", cwd=root)
    assert done.returncode == 0, done.stderr
    assert (root / "runs" / "tiny" / "results.json").is_file() and (root / "runs" / "tiny" / "cache").is_dir()


def test_a_full_disk_after_the_run_exits_2_naming_the_report_file(workspace: dict[str, Path]) -> None:
    """The disk fills while the reports are written, after the run: the file that could not be written is named, not the run folder."""
    root = workspace["root"]
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"]))
    reports = ["--json", str(root / "results.json"), "--junit", "/dev/full"]  # every write to /dev/full: ENOSPC
    done = run_cli("--recipe", str(path), "--out", str(root / "run"), "--quiet", *reports, cwd=root)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "quantize: error: /dev/full, field '--junit': cannot write: No space left on device\n"  # not the other report's flag
    assert (root / "run" / "results.json").is_file()  # the run's own reports were written before


def test_a_write_error_that_names_no_file_names_the_run_folder_given(workspace: dict[str, Path]) -> None:
    """A failed write() says nothing of its file (here: every file may hold 200 bytes, RLIMIT_FSIZE): the --out folder is named."""
    root = workspace["root"]
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"]))
    done = subprocess.run(
        [sys.executable, "-m", "quant.cli", "--recipe", str(path), "--out", str(root / "run"), "--quiet"],
        cwd=root, capture_output=True, text=True, timeout=600, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200)),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"quantize: error: {root / 'run'}, field '--out': cannot write: File too large\n"
