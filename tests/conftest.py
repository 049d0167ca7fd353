"""Shared fixtures: tiny models built with onnx.helper, tiny image sets, and recipe writing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CLASSES = 6
HEIGHT = 8


def tiny_ctc_model(seed: int = 0, opset: int = 13, weight_outlier: bool = False) -> onnx.ModelProto:
    """x[1,3,8,W] -> Conv -> Relu -> Conv -> mean over H -> [1,W,4] -> MatMul+Add -> Softmax -> [1,W,6].

    Small, but with the structure of a CTC text recogniser: convolutions, a MatMul head, per-frame classes.
    `weight_outlier` puts one huge weight in a conv1 filter whose output the ReLU always zeroes: FP32 does not
    care, but per-tensor INT8 scales every other conv1 weight to zero and the model collapses
    (per-channel INT8 survives) — a real quantization failure the gates must catch.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (8,)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, (4,)).astype(np.float32)
    if weight_outlier:
        w1[7, 0, 1, 1] = 500.0
        b1[7] = -1000.0  # the ReLU after it zeroes this channel for any input in [-1, 1]
    wm = rng.normal(0, 1.5, (4, CLASSES)).astype(np.float32)
    bm = rng.normal(0, 0.2, (CLASSES,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c2"], ["m"], name="pool_h", axes=[2], keepdims=0),
        helper.make_node("Transpose", ["m"], ["t"], name="to_frames", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "wm"], ["logits0"], name="head"),
        helper.make_node("Add", ["logits0", "bm"], ["logits"], name="head_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_ctc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, HEIGHT, "W"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, "W", CLASSES])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (wm, "wm"), (bm, "bm"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="quant-tests")
    model.ir_version = 8
    model.metadata_props.add(key="character", value="\n".join("abcde"))
    onnx.checker.check_model(model)
    return model


def write_images(folder: Path, count: int, seed: int, prefix: str = "img", size: tuple[int, int] | None = None) -> list[Path]:
    """Random stripes on a light background: enough structure for calibration, tiny on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        width, height = size or (int(rng.integers(16, 48)), int(rng.integers(8, 20)))
        pixels = np.full((height, width, 3), 230, np.uint8)
        for _ in range(4):
            x = int(rng.integers(0, width))
            pixels[:, x : x + int(rng.integers(1, 4))] = rng.integers(0, 120, 3)
        path = folder / f"{prefix}_{index:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def base_recipe(model_path: Path, calib: Path, eval_dir: Path, **overrides: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "name": "tiny",
        "model": {"path": str(model_path)},
        "inputs": {
            "x": {"resize": {"mode": "height", "height": HEIGHT, "min_width": 16}, "scale": "1/255", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
        },
        "outputs": {"probs": {"kind": "ctc", "charset_metadata": "character"}},
        "calibration": {"source": {"images": str(calib)}},
        "evaluation": {"source": {"images": str(eval_dir)}},
        "variants": {"fp16": {"method": "fp16"}},
        "gates": [{"metric": "cosine", "min": 0.9}, {"metric": "nonfinite", "max": 0}],
        "bench": {"samples": 1, "rounds": 3, "warmup": 0, "threads": 1},
        "promotion": {"to": "releases"},
    }
    recipe.update(overrides)
    return recipe


def write_recipe(folder: Path, recipe: dict[str, Any], name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def make_workspace(root: Path) -> dict[str, Path]:
    """A tiny model with calibration, tuning and evaluation image folders (disjoint) in `root`."""
    model_path = root / "tiny.onnx"
    onnx.save(tiny_ctc_model(), str(model_path))
    calib = root / "calib"
    evaluation = root / "eval"
    tune = root / "tune"
    write_images(calib, 12, seed=1, prefix="c")
    write_images(evaluation, 10, seed=2, prefix="e")
    write_images(tune, 10, seed=3, prefix="t")
    return {"root": root, "model": model_path, "calib": calib, "eval": evaluation, "tune": tune}


@pytest.fixture
def workspace(tmp_path: Path) -> dict[str, Path]:
    """A tiny model with calibration, tuning and evaluation image folders (disjoint)."""
    return make_workspace(tmp_path)


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """The real `quantize` command in a subprocess (exit codes, stdout/stderr as a user sees them)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "quant.cli", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- no silent skip under CI

SKIP_UNDER_CI = "skipped under CI, which must provide everything the tests need (.ci/run installs it)"


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """With CI set, a skipped test fails instead, with the skip's reason: a missing prerequisite
    (Chromium, an optional extra, mount rights) must never pass unnoticed as a skip. xfail is not a skip."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"{SKIP_UNDER_CI}: {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """The same for a whole module skipped at import (pytest.importorskip at module level)."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"{SKIP_UNDER_CI}: {_skip_reason(report)}"
