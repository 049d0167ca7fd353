"""Crash safety: `quantize` killed with SIGKILL in the middle of its work leaves nothing half-done.

The run is stopped deterministically with the test hook in quant/testpoint.py: with
QUANT_TEST_PAUSE_AT=<point> the process that reaches <point> writes its pid to QUANT_TEST_PAUSE_FILE
and sleeps; the test then kills the whole process group (the run and its build process) with SIGKILL.

One workspace goes through a chain of killed runs, each one picking up the debris of the ones before:
killed while computing the FP32 reference, while calibrating (in the build process), while evaluating
a variant, and with the release staged but not yet renamed into place. After every kill the release
folder must hold only complete versions whose SHA256SUMS verify with `sha256sum -c`; the run after
the last kill must complete, reuse the caches that were completed (reference outputs, calibration
ranges) and leave no staging folder or partial cache entry behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import base_recipe, write_recipe

POINTS = ["reference", "calibration", "evaluation", "promotion"]


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "quant.cli", *args],
        cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: the kill takes the build process with it
    )


def _kill_at(point: str, args: list[str], root: Path) -> int:
    """Run until `point`, SIGKILL the process group there; returns the pid that was paused."""
    marker = root / f"paused-{point}"
    process = _start(args, root, {"QUANT_TEST_PAUSE_AT": point, "QUANT_TEST_PAUSE_FILE": str(marker)})
    deadline = time.monotonic() + 240
    try:
        while not marker.exists():
            if process.poll() is not None:
                _, err = process.communicate()
                pytest.fail(f"the run ended (exit {process.returncode}) before reaching '{point}':\n{err[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the run never reached '{point}'")
            time.sleep(0.05)
        paused_pid = int(marker.read_text())
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    marker.unlink()
    return paused_pid


def _check_releases(release_dir: Path, expected_versions: list[str]) -> list[str]:
    """Every vN folder is complete and verifies; returns the names of other entries (staging)."""
    if not release_dir.exists():
        assert expected_versions == []
        return []
    versions = sorted(p.name for p in release_dir.iterdir() if not p.name.startswith("."))
    assert versions == expected_versions, f"release folder holds {versions}, expected {expected_versions}"
    for version in versions:
        folder = release_dir / version
        manifest = json.loads((folder / "manifest.json").read_text())
        listed = {f["file"] for f in manifest["files"]} | {"manifest.json"}
        assert listed | {"SHA256SUMS"} == {p.name for p in folder.iterdir()}, f"{version} is incomplete or has extra files"
        check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        assert sorted(line.split("  ", 1)[1] for line in (folder / "SHA256SUMS").read_text().splitlines()) == sorted(listed)
    return sorted(p.name for p in release_dir.iterdir() if p.name.startswith("."))


def test_sigkill_at_every_stage_leaves_only_complete_releases_and_the_next_run_finishes(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    variants = {"fp16": {"method": "fp16"}, "int8": {"method": "static_int8", "format": "QDQ"}}
    recipe = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants=variants))
    release_dir = root / "releases" / "tiny"
    args = ["--recipe", str(recipe), "--out", str(root / "run"), "--quiet"]

    # A complete release first (with its own cache), which no crash may touch.
    first = subprocess.run(
        [sys.executable, "-m", "quant.cli", *args[:-1], "--cache", str(root / "cache0"), "--quiet"], cwd=root, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    assert _check_releases(release_dir, ["v1"]) == []
    v1_sums = (release_dir / "v1" / "SHA256SUMS").read_text()

    cache = root / "run" / "cache"
    for point in POINTS:
        paused = _kill_at(point, args, root)
        staging = _check_releases(release_dir, ["v1"])
        if point == "promotion":
            # The staged release is there, hidden and incomplete in name: never a version.
            assert staging == [f".staging-v2-{paused}"], staging
        else:
            assert staging == [], staging
        if point == "reference":
            assert list((cache / "reference").glob("*.tmp*")), "the killed reference run left no scratch folder?"
            assert not any((p / "complete").exists() for p in (cache / "reference").iterdir() if p.suffix == "")
        if point == "calibration":
            assert not list((cache / "calibration").glob("*.json")), "a killed calibration left a cache entry"
            assert list((cache / "calibration").glob(f".work-{paused}-*")), "calibration did not run in its own scratch folder"

    assert (release_dir / "v1" / "SHA256SUMS").read_text() == v1_sums

    # The next run completes normally, reusing what was finished before the kills.
    final = subprocess.run([sys.executable, "-m", "quant.cli", *args], cwd=root, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    assert _check_releases(release_dir, ["v1", "v2"]) == [], "a staging folder of a killed run was left behind"
    results = json.loads((root / "run" / "results.json").read_text())
    assert results["reference"]["cache_hit"] is True
    assert results["variants"]["int8"]["build"]["calibration"]["cache_hit"] is True
    assert results["promotion"]["release"] == str(release_dir / "v2")
    leftovers = [p.name for p in (cache / "reference").iterdir() if ".tmp" in p.name]
    leftovers += [p.name for p in (cache / "calibration").iterdir() if p.suffix != ".json"]
    assert leftovers == [], f"scratch of killed runs was not cleaned: {leftovers}"
    # The builds are deterministic (FP16; INT8 from ranges computed anew on the same samples), so the
    # models released by the run after the kills are byte for byte those of v1.
    for model in ("fp16.onnx", "int8.onnx"):
        assert (release_dir / "v2" / model).read_bytes() == (release_dir / "v1" / model).read_bytes(), model
