"""Promotion into a real local MLflow registry (SQLite store, no server, no mocks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import base_recipe, run_cli, write_recipe

mlflow = (
    pytest.importorskip("mlflow", reason="the optional extra quant[mlflow] is not installed") if not os.environ.get("CI") else __import__("mlflow")
)
import mlflow.onnx  # noqa: F811 (binds the submodule onto the package imported above)
from mlflow import MlflowClient

TRACKING = "sqlite:///registry/mlflow.db"  # relative: from the recipe's folder


def _recipe(workspace: dict[str, Path], variants: dict[str, Any], **promotion: Any) -> Path:
    settings = {"to": "mlflow", "tracking_uri": TRACKING, "model_name": "tiny-{variant}", "alias": "champion", **promotion}
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants=variants, promotion=settings)
    return write_recipe(workspace["root"], recipe)


def _client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'registry' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)  # for the fluent helpers (artifacts, load_model) used below
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, registry_uri=uri)


def _run(root: Path, recipe: Path, out: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = run_cli("--recipe", str(recipe), "--out", str(root / out), "--quiet", *extra, cwd=root)
    results = json.loads((root / out / "results.json").read_text()) if (root / out / "results.json").exists() else {}
    return done, results


FAILING = {"method": "dynamic_int8", "gates": [{"metric": "size_ratio", "max": 0.01}]}


def test_each_promoted_variant_becomes_a_version_with_metrics_manifest_and_alias(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    recipe = _recipe(workspace, {"fp16": {"method": "fp16"}, "dyn": {"method": "dynamic_int8", "op_types": ["MatMul"]}})
    done, results = _run(root, recipe, "run1")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "--quiet: MLflow's own chatter must not reach stderr either"
    assert "alias 'champion' -> tiny-fp16 v1, tiny-dyn v1" in done.stdout or "alias 'champion' -> tiny-dyn v1, tiny-fp16 v1" in done.stdout
    assert not (root / "releases").exists() and not (root / "mlruns").exists(), "the registry is the only target"
    assert (root / "registry" / "mlartifacts").is_dir(), "artifacts beside the database, not in the working folder"

    client = _client(root)
    for variant in ("fp16", "dyn"):
        version = client.get_model_version_by_alias(f"tiny-{variant}", "champion")
        assert str(version.version) == "1"
        assert version.tags["quant.variant"] == variant and version.tags["quant.release"] == "complete"
        run = client.get_run(version.run_id)
        observed = results["variants"][variant]["metrics"]["probs"]["cosine"]
        assert run.data.metrics["probs.cosine"] == pytest.approx(observed)
        assert run.data.metrics["size_ratio"] == pytest.approx(results["variants"][variant]["size_ratio"])
        assert run.data.params["method"] == results["variants"][variant]["method"]
        manifest = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/manifest.json")
        assert set(manifest["variants"]) == {"fp16", "dyn"}
        assert all(g["passed"] for g in manifest["variants"][variant]["gates"])
        logged_metrics = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/metrics.json")
        assert logged_metrics["metrics"]["probs"]["cosine"] == pytest.approx(observed)
        # The registered model is the promoted one: traceable, and it runs.
        model = mlflow.onnx.load_model(f"models:/tiny-{variant}@champion")
        assert {p.key: p.value for p in model.metadata_props}["quant.variant"] == variant
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        out = session.run(None, {"x": np.zeros((1, 3, 8, 24), np.float32)})[0]
        assert np.isfinite(out).all() and out.shape[-1] == 6
    registry = results["promotion"]
    assert registry["versions"]["fp16"] == {"model_name": "tiny-fp16", "version": "1", "model_uri": "models:/tiny-fp16/1"}
    assert registry["alias_moved_to"] == {"tiny-fp16": "1", "tiny-dyn": "1"}
    assert "tiny-fp16 v1 (fp16)" in (root / "run1" / "report.html").read_text(), "the report names where the release went"

    # The second run makes version 2, moves the alias, and compares with the last registered release.
    again, results = _run(root, recipe, "run2", "--only", "fp16")
    assert again.returncode == 0, again.stderr
    assert again.stderr == "", "--quiet: no MLflow progress bar while reading the last release either"
    assert client.get_model_version_by_alias("tiny-fp16", "champion").version == 2
    assert client.get_model_version_by_alias("tiny-dyn", "champion").version == 1
    assert results["regression"]["previous_version"] in {"tiny-dyn v1", "tiny-fp16 v1"}  # both carry run 1's manifest
    assert "cosine" in results["regression"]["variants"]["fp16"]


def test_alias_stays_put_unless_every_gate_passed(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    both = {"fp16": {"method": "fp16"}, "dyn": {"method": "dynamic_int8"}}
    # One registered model for every variant: the alias goes to the best by rank_by (smallest file).
    recipe = _recipe(workspace, both, model_name="tiny", rank_by="size_ratio")
    done, results = _run(root, recipe, "run1")
    assert done.returncode == 0, done.stderr
    client = _client(root)
    versions = {v.tags["quant.variant"]: str(v.version) for v in client.search_model_versions("name = 'tiny'")}
    assert set(versions) == {"fp16", "dyn"}
    smaller = min(("fp16", "dyn"), key=lambda v: results["variants"][v]["size_ratio"])
    assert str(client.get_model_version_by_alias("tiny", "champion").version) == versions[smaller]

    # A run where one variant fails: the passing one is registered, the alias does not move.
    recipe = _recipe(workspace, {"fp16": {"method": "fp16"}, "tight": FAILING}, model_name="tiny")
    done, results = _run(root, recipe, "run2")
    assert done.returncode == 0, done.stderr  # all_passing: fp16 passed
    assert results["variants"]["tight"]["status"] == "failed"
    assert results["promotion"]["versions"]["fp16"]["version"] == "3"
    assert results["promotion"]["alias_moved_to"] == {}
    assert str(client.get_model_version_by_alias("tiny", "champion").version) == versions[smaller]
    assert "not moved" in results["promotion"]["release"]


def test_a_killed_registration_is_never_aliased_and_the_next_run_removes_it(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    recipe = _recipe(workspace, {"fp16": {"method": "fp16"}, "dyn": {"method": "dynamic_int8"}}, model_name="tiny")
    marker = root / "paused"
    env = {**os.environ, "QUANT_TEST_PAUSE_AT": "registration", "QUANT_TEST_PAUSE_FILE": str(marker)}
    process = subprocess.Popen([sys.executable, "-m", "quant.cli", "--recipe", str(recipe), "--out", str(root / "run1"), "--quiet"],
                               cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not marker.exists():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run never reached registration"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
    client = _client(root)
    left = client.search_model_versions("name = 'tiny'")
    assert [v.tags["quant.release"] for v in left] == ["incomplete"]
    assert "champion" not in client.get_registered_model("tiny").aliases

    done, results = _run(root, recipe, "run2")
    assert done.returncode == 0, done.stderr
    left = client.search_model_versions("name = 'tiny'")
    assert sorted(v.tags["quant.release"] for v in left) == ["complete", "complete"], "the abandoned version was not removed"
    assert results["regression"] is None, "an incomplete version is never the last release"


@pytest.mark.parametrize(
    "promotion, flag, words",
    [
        ({"to": "mlflow", "tracking_uri": TRACKING}, None, "needs model_name"),
        ({"to": "releases", "tracking_uri": TRACKING}, None, "only apply with 'to: mlflow'"),
        ({"to": "mlflow", "tracking_uri": TRACKING, "model_name": "m", "alias": "latest"}, None, "reserved"),
        ({"to": "mlflow", "tracking_uri": TRACKING, "model_name": "m-{varaint}"}, None, "{variant} and {recipe} only"),
        ({"to": "mlflow", "tracking_uri": TRACKING, "model_name": "m"}, "--release-version", "numbers its own"),
        ({"to": "mlflow", "tracking_uri": "sqlite:///blocker/db/mlflow.db", "model_name": "m"}, None, "is a file"),
        ({"to": "mlflow", "tracking_uri": "sqlite:///corrupt.db", "model_name": "m"}, None, "file is not a database"),
    ],
)
def test_bad_registry_settings_exit_2_naming_the_field_and_register_nothing(
    workspace: dict[str, Path], promotion: dict[str, Any], flag: str | None, words: str
) -> None:
    root = workspace["root"]
    (root / "blocker").write_text("a file where a folder is needed")
    (root / "corrupt.db").write_text("not an SQLite database")
    recipe = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], promotion=promotion))
    done = run_cli("--recipe", str(recipe), "--out", str(root / "run"), *([flag, "v1"] if flag else []), cwd=root)
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and ("promotion" in done.stderr or "--release-version" in done.stderr), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, "one clear line"
    assert not (root / "registry").exists() and not (root / "releases").exists()
