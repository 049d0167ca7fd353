"""A model family is released whole: every file of each promoted variant (its parts in the family's layout and the
vocabulary/config beside them) lands together with one manifest and SHA256SUMS, or nothing does. A process killed
with some of a family's files staged, or a failure there, leaves no version and the next release is complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import onnx
import pytest

from quant.release.bundle import FamilyFile
from quant.release.folder import promote
from quant.testpoint import InjectedFailure
from tests.conftest import REPO, tiny_ctc_model

PARTS = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")


def _family(folder: Path) -> dict[str, dict[str, FamilyFile]]:
    """Two variants of a three-part family (tiny models standing in for the parts) with a vocabulary beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, FamilyFile]] = {}
    for variant in ("int8", "int4"):
        entries = {}
        for index, name in enumerate(PARTS):
            path = folder / f"{variant}-{name}"
            onnx.save(tiny_ctc_model(seed=index), str(path))
            entries[name] = FamilyFile(path, {"quant.variant": variant, "quant.part": name.removesuffix("_model.onnx")})
        vocab = folder / "vocab.json"
        vocab.write_text('{"<s>": 0, "a": 1}', encoding="utf-8")
        entries["vocab.json"] = FamilyFile(vocab, None)
        files[variant] = entries
    return files


def _manifest() -> dict[str, object]:
    return {"variants": {"int8": {"method": "weight_only", "parts": {}}, "int4": {"method": "weight_only", "parts": {}}}}


def _check_complete(version: Path) -> None:
    manifest = json.loads((version / "manifest.json").read_text())
    listed = {f["file"] for f in manifest["files"]}
    assert listed == {f"{v}/{name}" for v in ("int8", "int4") for name in (*PARTS, "vocab.json")}
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=version, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    part = onnx.load(str(version / "int4" / "decoder_model.onnx"))
    assert {p.key: p.value for p in part.metadata_props}["quant.part"] == "decoder"
    assert (version / "int8" / "vocab.json").read_text() == '{"<s>": 0, "a": 1}'


def test_a_family_release_holds_every_file_of_every_variant_checksummed(tmp_path: Path) -> None:
    version = promote(tmp_path / "releases", "ocr", {}, _manifest(), {}, families=_family(tmp_path / "built"))
    assert version.name == "v1"
    _check_complete(version)


def test_a_failure_with_part_of_a_family_staged_leaves_no_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANT_TEST_FAIL_AT", "family_promotion")
    releases = tmp_path / "releases"
    with pytest.raises(InjectedFailure):
        promote(releases, "ocr", {}, _manifest(), {}, families=_family(tmp_path / "built"))
    assert list((releases / "ocr").iterdir()) == []  # no version, no staging folder


def test_a_kill_with_part_of_a_family_staged_leaves_no_release_and_the_next_one_is_whole(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from tests.test_family_release import _family, _manifest
        from quant.release.folder import promote
        root = Path({str(tmp_path)!r})
        promote(root / "releases", "ocr", {{}}, _manifest(), {{}}, families=_family(root / "built"))
        """
    )
    marker = tmp_path / "paused"
    env = {**os.environ, "QUANT_TEST_PAUSE_AT": "family_promotion", "QUANT_TEST_PAUSE_FILE": str(marker)}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while not marker.exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "never reached the family_promotion point"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
    releases = tmp_path / "releases" / "ocr"
    left = [p.name for p in releases.iterdir()]
    assert [name for name in left if not name.startswith(".staging-")] == []  # the killed run's files are only staged
    assert left, "the kill came with files staged"
    version = promote(tmp_path / "releases", "ocr", {}, _manifest(), {}, families=_family(tmp_path / "built"))
    assert version.name == "v1" and [p.name for p in releases.iterdir()] == ["v1"]  # the dead run's staging swept
    _check_complete(version)
