"""Determinism: the same recipe on the same inputs, run twice in separate run folders with separate caches
(and different Python hash seeds, so no set or dict order can leak into a model), gives byte-identical
quantized models and identical gate results.

What is deterministic (checked here): every built model (fp16, dynamic_int8, static_int8 QDQ and QOperator,
minmax and entropy calibration), the calibration ranges, every released file (models with their metadata,
SHA256SUMS), every accuracy metric, distribution and gate result, sizes and hashes.

What cannot be deterministic, and is excluded from the comparison by name:
- `latency_ratio` and the rest of `latency` (medians of timed runs: measured, so noisy), and the
  `latency_ratio` gate's observed value and verdict;
- wall-clock timestamps (`started`, `finished`, `created`) and durations (`seconds`, `build_seconds`,
  `calibration_seconds`, each stage's `started` and `seconds`) and the build process's peak memory (`build_peak_rss_mb`,
  a stage's `peak_rss_mb`);
- absolute paths name the run folder (`prepared_model`, `promotion.release`, the results' file paths): they are
  compared with the run folder replaced by a placeholder;
- `regression` compares with whatever earlier release sits in the release folder (none in both runs here).
The `inc` method's accuracy-aware tuning is not covered here (optional extra, not installed in every venv).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import base_recipe, write_recipe

MEASURED_KEYS = {
    *("started", "finished", "created", "seconds", "build_seconds", "calibration_seconds"),
    *("build_peak_rss_mb", "peak_rss_mb", "latency", "latency_ratio"),
}


def _normalise(node: Any, root: str) -> Any:
    """The document without measured values; run-folder paths made relative."""
    if isinstance(node, dict):
        kept = {k: _normalise(v, root) for k, v in node.items() if k not in MEASURED_KEYS}
        if kept.get("metric") == "latency_ratio":
            kept = {"metric": "latency_ratio"}  # the gate itself must be there; its observation is measured
        return kept
    if isinstance(node, list):
        return [_normalise(v, root) for v in node]
    if isinstance(node, str):
        return node.replace(root, "<root>")
    return node


def _run(root: Path, shared: dict[str, Path], seed: str) -> subprocess.CompletedProcess[str]:
    root.mkdir()
    variants = {
        "fp16": {"method": "fp16"},
        "dyn": {"method": "dynamic_int8", "per_channel": True},
        "qdq": {"method": "static_int8", "format": "QDQ"},
        "qop": {"method": "static_int8", "format": "QOperator", "per_channel": False},
        "qdq-entropy": {"method": "static_int8", "format": "QDQ", "calibrate": "entropy"},
    }
    gates = [{"metric": "cosine", "min": 0.9}, {"metric": "nonfinite", "max": 0}, {"metric": "latency_ratio", "max": 1000}]
    recipe = base_recipe(shared["model"], shared["calib"], shared["eval"], variants=variants, gates=gates)
    recipe["bench"]["threads"] = 2  # multi-threaded inference must not change any number
    path = write_recipe(root, recipe)
    return subprocess.run(
        [sys.executable, "-m", "quant.cli", "--recipe", str(path), "--out", str(root / "run"), "--quiet"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONHASHSEED": seed},
    )


def test_two_runs_give_identical_models_and_gate_results(workspace: dict[str, Path]) -> None:
    first, second = workspace["root"] / "a", workspace["root"] / "b"
    for root, seed in ((first, "1"), (second, "2")):
        done = _run(root, workspace, seed)
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", f"--quiet still logged (the build processes too must be quiet):\n{done.stderr}"

    built = sorted(p.name for p in (first / "run" / "variants").glob("*.onnx"))
    assert built == ["dyn.onnx", "fp16.onnx", "qdq-entropy.onnx", "qdq.onnx", "qop.onnx"]
    for name in built:
        a, b = (first / "run" / "variants" / name).read_bytes(), (second / "run" / "variants" / name).read_bytes()
        assert a == b, f"{name} differs between two identical runs"

    # Calibration ranges: the root of static INT8's determinism.
    ranges_a = {p.name: p.read_text() for p in (first / "run" / "cache" / "calibration").glob("*.json")}
    ranges_b = {p.name: p.read_text() for p in (second / "run" / "cache" / "calibration").glob("*.json")}
    assert ranges_a == ranges_b and len(ranges_a) == 2  # minmax and entropy

    # The releases: every file but the manifest byte-identical; the manifest equal once measured values are dropped.
    release_a, release_b = first / "releases" / "tiny" / "v1", second / "releases" / "tiny" / "v1"
    files = sorted(p.name for p in release_a.iterdir())
    assert files == sorted(p.name for p in release_b.iterdir())
    for name in files:
        if name in ("manifest.json", "SHA256SUMS"):
            continue
        assert (release_a / name).read_bytes() == (release_b / name).read_bytes(), f"released {name} differs"
    manifest_a = _normalise(json.loads((release_a / "manifest.json").read_text()), str(first))
    manifest_b = _normalise(json.loads((release_b / "manifest.json").read_text()), str(second))
    assert manifest_a == manifest_b
    sums_a = [line for line in (release_a / "SHA256SUMS").read_text().splitlines() if not line.endswith("manifest.json")]
    sums_b = [line for line in (release_b / "SHA256SUMS").read_text().splitlines() if not line.endswith("manifest.json")]
    assert sums_a == sums_b

    # Gate results and every metric: identical except what is measured.
    results_a = json.loads((first / "run" / "results.json").read_text())
    results_b = json.loads((second / "run" / "results.json").read_text())
    for name in results_a["variants"]:
        gates_a = {g["metric"]: g for g in results_a["variants"][name]["gates"]}
        gates_b = {g["metric"]: g for g in results_b["variants"][name]["gates"]}
        assert set(gates_a) == {"cosine", "nonfinite", "latency_ratio"}
        for metric in ("cosine", "nonfinite"):
            assert gates_a[metric] == gates_b[metric], f"{name}: gate {metric} differs"
    assert _normalise(results_a, str(first)) == _normalise(results_b, str(second))
