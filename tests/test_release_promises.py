"""The release folder's promises, checked on `promote` itself: SHA256SUMS covers every file (the
manifest too) and verifies with `sha256sum -c --strict`; versions count up and are never overwritten;
the release is staged beside the target and renamed, so a failure at any point leaves no version."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quant.bench import LatencyResult
from quant.errors import OutputError
from quant.files import check_can_create, copy_model
from quant.outcome import VariantOutcome
from quant.recipe.schema import Promotion
from quant.release.folder import STAGING_PREFIX, ReleaseFolder, existing_versions, next_version, promote, remove_stale_staging
from quant.release.policy import ranked, select_for_release, worst_exit_code
from quant.release.previous import PreviousRelease, changes_since_release
from quant.testpoint import InjectedFailure
from tests.conftest import tiny_ctc_model

MANIFEST = {"schema_version": 1, "recipe": {"name": "tiny"}}


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    """Two variant files; `ext` keeps its weights in an external data file, as a model over 2 GB would."""
    folder = tmp_path / "built"
    folder.mkdir()
    plain = folder / "plain.onnx"
    model = tiny_ctc_model()
    model.metadata_props.add(key="quant.recipe", value="stale")  # replaced by the release's own
    onnx.save(model, str(plain))
    ext = folder / "ext.onnx"
    onnx.save(tiny_ctc_model(seed=3), str(ext), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    return {"plain": plain, "ext": ext}


def _metadata(variant: str) -> dict[str, str]:
    return {"quant.recipe": "tiny", "quant.variant": variant}


def _promote(root: Path, models: dict[str, Path], version: str | None = None) -> Path:
    return promote(root, "tiny", models, MANIFEST, {name: _metadata(name) for name in models}, version)


def test_sha256sums_lists_every_file_of_the_release_and_verifies(tmp_path: Path, models: dict[str, Path]) -> None:
    release = _promote(tmp_path / "releases", models)
    assert release == tmp_path / "releases" / "tiny" / "v1"
    files = {p.name for p in release.iterdir()}
    assert files == {"plain.onnx", "ext.onnx", "ext.onnx.data", "manifest.json", "SHA256SUMS"}
    listed = [line.split("  ", 1) for line in (release / "SHA256SUMS").read_text().splitlines()]
    assert sorted(name for _, name in listed) == sorted(files - {"SHA256SUMS"})  # the manifest included
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=release, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # The manifest names each model file with its hash and the version it belongs to.
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["version"] == "v1" and manifest["recipe"] == MANIFEST["recipe"]
    assert {(f["variant"], f["file"]) for f in manifest["files"]} == {("plain", "plain.onnx"), ("ext", "ext.onnx"), ("ext", "ext.onnx.data")}
    assert {f["file"]: f["sha256"] for f in manifest["files"]} == {name: digest for digest, name in listed if name != "manifest.json"}


def test_released_models_carry_the_metadata_and_the_same_weights(tmp_path: Path, models: dict[str, Path]) -> None:
    release = _promote(tmp_path / "releases", models)
    for name, source in models.items():
        released = onnx.load(str(release / f"{name}.onnx"))
        original = onnx.load(str(source))
        assert {p.key: p.value for p in released.metadata_props} == {"character": "\n".join("abcde"), **_metadata(name)}
        for a, b in zip(released.graph.initializer, original.graph.initializer):
            np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_versions_count_up_in_number_order_and_are_never_overwritten(tmp_path: Path, models: dict[str, Path]) -> None:
    root = tmp_path / "releases"
    assert next_version(root / "tiny") == "v1"
    one = {"plain": models["plain"]}
    assert _promote(root, one).name == "v1"
    assert _promote(root, one).name == "v2"
    assert _promote(root, one, "v9").name == "v9"
    assert _promote(root, one).name == "v10"  # v10 after v9: numbers, not strings
    assert existing_versions(root / "tiny") == ["v1", "v2", "v9", "v10"]
    before = (root / "tiny" / "v2" / "SHA256SUMS").read_bytes()
    with pytest.raises(OutputError, match="never overwritten"):
        _promote(root, one, "v2")
    assert (root / "tiny" / "v2" / "SHA256SUMS").read_bytes() == before
    with pytest.raises(OutputError, match="v1, v2"):
        _promote(root, one, "2")


def test_a_failure_with_the_release_staged_leaves_no_version_and_no_staging(
    tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "releases"
    _promote(root, {"plain": models["plain"]})
    monkeypatch.setenv("QUANT_TEST_FAIL_AT", "promotion")  # raised after every file is staged, before the rename
    with pytest.raises(InjectedFailure):
        _promote(root, models)
    assert sorted(p.name for p in (root / "tiny").iterdir()) == ["v1"]


def test_a_write_error_while_staging_is_an_output_error_and_leaves_nothing(tmp_path: Path, models: dict[str, Path]) -> None:
    root = tmp_path / "releases"
    missing = {"plain": models["plain"], "gone": tmp_path / "built" / "gone.onnx"}  # the second copy fails
    with pytest.raises(OutputError) as raised:
        promote(root, "tiny", missing, MANIFEST, {"plain": _metadata("plain"), "gone": _metadata("gone")})
    assert raised.value.field == "promotion.to"
    assert list((root / "tiny").iterdir()) == []


def test_a_release_folder_under_a_file_is_an_output_error(tmp_path: Path, models: dict[str, Path]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputError) as raised:
        _promote(blocker / "releases", models)
    assert raised.value.field == "promotion.to"


def test_stale_staging_of_a_dead_run_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    release_dir = tmp_path / "tiny"
    dead = 10_000_000  # beyond the largest pid Linux hands out (4194304): never alive
    for pid in (dead, os.getpid()):
        (release_dir / f"{STAGING_PREFIX}v2-{pid}").mkdir(parents=True)
    (release_dir / "v1").mkdir()
    assert remove_stale_staging(release_dir) == [f"{STAGING_PREFIX}v2-{dead}"]
    assert sorted(p.name for p in release_dir.iterdir()) == sorted([f"{STAGING_PREFIX}v2-{os.getpid()}", "v1"])
    assert existing_versions(release_dir) == ["v1"]  # staging is never a version


def test_the_release_is_staged_complete_beside_the_target_and_only_then_renamed(tmp_path: Path, models: dict[str, Path]) -> None:
    """Paused at the last moment before the rename (the test point), in a process of its own: the
    version does not exist yet, the hidden staging folder holds the complete, verifiable release."""
    root = tmp_path / "releases"
    marker = tmp_path / "paused"
    script = (
        "import sys, json; from pathlib import Path; from quant.release.folder import promote\n"
        "models = {k: Path(v) for k, v in json.loads(sys.argv[1]).items()}\n"
        "promote(Path(sys.argv[2]), 'tiny', models, {}, {k: {} for k in models})\n"
    )
    env = {**os.environ, "QUANT_TEST_PAUSE_AT": "promotion", "QUANT_TEST_PAUSE_FILE": str(marker)}
    process = subprocess.Popen([sys.executable, "-c", script, json.dumps({k: str(v) for k, v in models.items()}), str(root)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None and time.monotonic() < deadline, "promote never reached the rename"
            time.sleep(0.05)
        entries = sorted(p.name for p in (root / "tiny").iterdir())
        assert entries == [f"{STAGING_PREFIX}v1-{process.pid}"], entries
        staged = root / "tiny" / entries[0]
        check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=staged, capture_output=True, text=True)
        assert check.returncode == 0 and check.stdout.count(": OK") == 4, check.stdout + check.stderr
    finally:
        process.kill()
        process.wait()
    # The killed run's staging is never a version; the next promotion clears it and takes v1.
    assert existing_versions(root / "tiny") == []
    assert _promote(root, models).name == "v1"
    assert sorted(p.name for p in (root / "tiny").iterdir()) == ["v1"]


def test_every_variant_in_both_releases_is_compared_with_the_last_one() -> None:
    """A variant new in this run has nothing to compare with; the variants after it still do."""
    previous = PreviousRelease("v3", {"variants": {"old": {"metrics": {"y": {"cosine": 0.99}, "": {"size_ratio": 0.5}}}}})
    current = {"new": {"y": {"cosine": 0.9}}, "old": {"y": {"cosine": 0.97}, "": {"size_ratio": 0.25, "latency_ratio": 0.5}}}
    changes = changes_since_release(previous, current)
    assert changes["previous_version"] == "v3" and list(changes["variants"]) == ["old"]
    assert set(changes["variants"]["old"]) == {"cosine", "size_ratio"}  # latency was not measured last time: nothing to compare
    assert changes["variants"]["old"]["cosine"] == {"previous": 0.99, "current": 0.97, "change": pytest.approx(-0.02)}
    assert changes["variants"]["old"]["size_ratio"] == {"previous": 0.5, "current": 0.25, "change": -0.25}


@pytest.mark.parametrize("rank_by", ["size_ratio", "latency_ratio"])
def test_policy_best_promotes_the_passing_variant_with_the_lowest_rank_by(rank_by: str) -> None:
    def outcome(name: str, ratio: float, status: str = "passed") -> VariantOutcome:
        latency = LatencyResult(reference_ms=10.0, variant_ms=10.0 * ratio, ratio=ratio, rounds=3, samples=1, threads=1, spread=0.0)
        sized = {"size_ratio": ratio} if rank_by == "size_ratio" else {"latency": latency}
        return VariantOutcome(name=name, method="static_int8", options={}, status=status, **sized)  # type: ignore[arg-type]

    outcomes = [outcome("middle", 0.5), outcome("smallest_but_failed", 0.1, "failed"), outcome("lowest", 0.3), outcome("highest", 0.9)]
    promotion = Promotion(policy="best", rank_by=rank_by)  # type: ignore[arg-type]
    promoted, met = select_for_release(promotion, outcomes)
    assert met and [o.name for o in promoted] == ["lowest"]
    assert ranked(promotion, outcomes) == ["smallest_but_failed", "lowest", "middle", "highest"]


def test_a_model_is_copied_with_its_external_data_in_its_sub_folders(tmp_path: Path) -> None:
    """What a search copies as its chosen model: the copy loads on its own, with the same weights."""
    source = tmp_path / "built" / "m.onnx"
    (source.parent / "weights" / "fp32").mkdir(parents=True)
    model = tiny_ctc_model(seed=3)
    weights = [numpy_helper.to_array(t).tobytes() for t in model.graph.initializer]
    onnx.save(model, str(source), save_as_external_data=True, location="weights/fp32/m.data", size_threshold=0)
    target = tmp_path / "run" / "variants" / "m.onnx"  # folders made as needed
    written = copy_model(source, target)
    assert written == [target, target.parent / "weights" / "fp32" / "m.data"]
    copied = onnx.load(str(target))  # reads the external data: fails when it was left behind
    assert [numpy_helper.to_array(t).tobytes() for t in copied.graph.initializer] == weights


def test_all_or_nothing_promotes_every_variant_or_none_and_all_passing_the_passing_ones() -> None:
    def outcome(name: str, status: str) -> VariantOutcome:
        return VariantOutcome(name=name, method="fp16", options={}, status=status)  # type: ignore[arg-type]

    passing, failing = [outcome("a", "passed"), outcome("b", "passed")], [outcome("a", "passed"), outcome("b", "failed")]
    every = Promotion(policy="all_or_nothing")
    promoted, met = select_for_release(every, passing)
    assert met and [o.name for o in promoted] == ["a", "b"]
    assert select_for_release(every, failing) == ([], False)
    promoted, met = select_for_release(Promotion(policy="all_passing"), failing)
    assert met and [o.name for o in promoted] == ["a"]
    assert select_for_release(Promotion(policy="all_passing"), [outcome("b", "failed")]) == ([], False)


def test_a_release_root_under_a_file_is_found_before_anything_is_built(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError) as raised:
        check_can_create(blocker / "releases" / "tiny", "promotion.to")
    assert (raised.value.file, raised.value.field) == (str(blocker), "promotion.to")
    check_can_create(tmp_path / "new" / "releases", "promotion.to")  # not there yet, under a writable folder: fine
    assert not (tmp_path / "new").exists()  # and nothing created


@pytest.mark.parametrize(("codes", "worst"), [([0, 4], 4), ([4, 0], 4), ([4, 1], 1), ([1, 4], 1), ([0, 1, 0], 1), ([0, 0], 0), ([], 0)])
def test_across_recipes_a_failed_gate_outweighs_an_undecided_one_which_outweighs_a_pass(codes: list[int], worst: int) -> None:
    assert worst_exit_code(codes) == worst


def test_a_release_destination_keeps_the_version_it_was_checked_with(tmp_path: Path) -> None:
    """The version checked before anything is built is the one promoted: the destination cannot be re-pointed in between."""
    destination = ReleaseFolder(tmp_path / "releases", "recipe", "v3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        destination.version = "v1"  # type: ignore[misc]
    assert destination.version == "v3"
