"""The inc method (Intel Neural Compressor's ONNX line): direct builds, tuning, the CLI, and PP-OCRv4 rec."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quant.data.feeds import checked_feeds
from quant.data.sources import open_source
from quant.errors import BuildError
from quant.methods.base import BuildContext, BuildResult
from quant.methods.inc import INSTALL_HINT, build_inc
from quant.metrics.numeric import cosine
from quant.model import inspect_model, locate, session
from quant.recipe.schema import DataSet, ImageInput, IncOptions, ModelSource
from tests.conftest import REPO, base_recipe, run_cli, tiny_ctc_model, write_recipe

OCR_LINES = REPO / "calibration_data" / "ocr_lines"


def _missing(message: str) -> None:
    """A missing prerequisite fails in CI (where it must be installed) and skips locally."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def inc_import_error() -> str | None:
    try:
        import onnx_neural_compressor.quantization  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


@pytest.fixture
def inc(inc_import_error: str | None) -> None:
    if inc_import_error is not None:
        _missing(f"onnx-neural-compressor is not importable ({inc_import_error}); install: {INSTALL_HINT}")


def _context(workspace: dict[str, Path], model_path: Path | None = None) -> BuildContext:
    """The context quant.runner.build_context gives a method, from the tiny workspace's recipe."""
    tuning = {"source": {"images": str(workspace["tune"])}}
    recipe = base_recipe(model_path or workspace["model"], workspace["calib"], workspace["eval"], tuning=tuning)
    info = inspect_model(model_path or workspace["model"])
    inputs = {name: ImageInput.model_validate(spec) for name, spec in recipe["inputs"].items()}
    root = workspace["root"]
    sources = {f: open_source(DataSet.model_validate(recipe[f]), root, inputs, list(info.inputs), f) for f in ("calibration", "tuning")}
    return BuildContext(
        info.path,
        info.sha256,
        info.inputs,
        root / "run" / "work" / "inc",
        root / "run" / "cache",
        sources["calibration"],
        sources["tuning"],
        log=lambda _: None,
    )


def _build(workspace: dict[str, Path], model_path: Path | None = None, **options: Any) -> tuple[BuildResult, BuildContext]:
    context = _context(workspace, model_path)
    result = build_inc(IncOptions.model_validate({"method": "inc", **options}), context, workspace["root"] / "run" / "variants" / "inc.onnx")
    return result, context


def _agreement(context: BuildContext, candidate: Path) -> float:
    """Mean cosine of the candidate's output vs FP32 on the context's (tuning) samples."""
    assert context.tuning is not None
    fp32, quantized = session(context.model_path), session(candidate)
    return float(
        np.mean([cosine(fp32.run(None, f)[0], quantized.run(None, f)[0]) for _, f in checked_feeds(context.tuning, context.model_inputs)])
    )


def test_static_build_is_one_int8_file_that_agrees_with_fp32(
    inc: None, workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result, context = _build(workspace)
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["inc.onnx"]  # no `_data` file beside it
    model = onnx.load(str(result.path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert {n.op_type for n in model.graph.node} >= {"QLinearConv", "QLinearMatMul", "QuantizeLinear"}
    assert result.details["quantized_ops"]["QLinearConv"] == _count(workspace["model"], "Conv")
    assert result.details["calibration_samples"] == len(list(workspace["calib"].glob("*.png")))
    assert {p.key: p.value for p in model.metadata_props}["character"] == "\n".join("abcde")
    assert _agreement(context, result.path) > 0.99
    assert list(cwd.iterdir()) == [] and list(context.work_dir.iterdir()) == []  # INC's temp dirs went under work_dir, then away


def test_unnamed_nodes_and_qdq_per_channel_on_an_upgraded_opset(inc: None, workspace: dict[str, Path]) -> None:
    # The opset converter leaves nodes unnamed; INC keys its configs by name and asserts on duplicates.
    model = tiny_ctc_model(opset=12)
    for node in model.graph.node:
        node.name = ""
    path = workspace["root"] / "unnamed12.onnx"
    onnx.save(model, str(path))
    result, context = _build(workspace, path, format="QDQ", per_channel=True)  # the default prepare upgrades to opset 13
    built = onnx.load(str(result.path))
    assert result.details["renamed_nodes"] == len(model.graph.node)
    initializers = {t.name: numpy_helper.to_array(t) for t in built.graph.initializer}
    conv_weight_scales = [
        initializers[n.input[1]] for n in built.graph.node if n.op_type == "DequantizeLinear" and initializers.get(n.input[0], np.zeros(0)).ndim == 4
    ]
    assert conv_weight_scales and all(s.shape in ((8,), (4,)) for s in conv_weight_scales)  # per output channel
    assert _agreement(context, result.path) > 0.99


def test_qdq_per_channel_below_opset_13_is_refused_not_silently_per_tensor(inc: None, workspace: dict[str, Path]) -> None:
    path = workspace["root"] / "tiny12.onnx"
    onnx.save(tiny_ctc_model(opset=12), str(path))
    with pytest.raises(BuildError, match="opset 13"):
        _build(workspace, path, format="QDQ", per_channel=True, prepare={"opset": None})
    result, _ = _build(workspace, path, format="QDQ", per_channel=False, prepare={"opset": None})
    assert result.details["quantized_ops"]["QuantizeLinear"] > 0


@pytest.mark.parametrize(
    ("tolerable_loss", "max_trials", "trials", "returned"),
    [
        (0.5, 5, 1, True),  # the first (most quantized) config meets the goal
        (0.0, 5, 5, True),  # max_trials reached short of the goal: autotune returns its last trial (here not the best)
        (0.0, 10, 5, False),  # every config tried, none met the goal: autotune exits (SystemExit)
    ],
)
def test_tuning_records_every_trial_and_keeps_the_best(
    inc: None, workspace: dict[str, Path], tolerable_loss: float, max_trials: int, trials: int, returned: bool
) -> None:
    result, context = _build(workspace, tune=True, tolerable_loss=tolerable_loss, max_trials=max_trials)
    tuning = result.details["tuning"]
    scores = [t["score"] for t in tuning["trials"]]
    assert len(scores) == trials and tuning["baseline"] == pytest.approx(1.0, abs=1e-4)
    assert all(t["op_types"] and t["quantized_ops"] for t in tuning["trials"])
    assert len({tuple(t["op_types"]) for t in tuning["trials"]}) == trials  # distinct configs, labelled in order
    assert (tuning["autotune_returned"] is not None) == returned
    assert tuning["goal_met"] == (tolerable_loss > 0)
    if tuning["goal_met"]:
        assert tuning["chosen_trial"] == 1
    else:
        assert tuning["chosen_score"] == max(scores) and scores[tuning["chosen_trial"] - 1] == max(scores)
    # The written model is the chosen trial: re-scoring it gives the recorded score.
    assert _agreement(context, result.path) == pytest.approx(tuning["chosen_score"], abs=1e-6)


def test_missing_package_is_a_build_error_with_the_install_hint(workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("onnx_neural_compressor")] + ["onnx_neural_compressor"]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import fails, as when not installed
    with pytest.raises(BuildError, match=r'pip install -e "\.\[inc\]" && pip install --no-deps onnx-neural-compressor==1\.0'):
        _build(workspace)


def _count(model: Path, op_type: str) -> int:
    return sum(node.op_type == op_type for node in onnx.load(str(model), load_external_data=False).graph.node)


def _judged(results: dict[str, Any], done_stderr: str, name: str = "inc") -> dict[str, Any]:
    variant = results["variants"][name]
    assert variant["status"] != "error", variant["error"] or done_stderr
    assert variant["gates"] and variant["build"]["engine"].startswith("onnx-neural-compressor")
    return variant


def test_cli_builds_and_judges_an_inc_variant(inc: None, workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants={"inc": {"method": "inc"}})
    done = run_cli("--recipe", str(write_recipe(root, recipe)), "--out", str(root / "run"), cwd=root)
    assert done.returncode in (0, 1), done.stderr
    variant = _judged(json.loads((root / "run" / "results.json").read_text()), done.stderr)
    assert variant["build"]["quantized_ops"]["QLinearConv"] == _count(workspace["model"], "Conv")


@pytest.mark.integration
def test_ppocrv4_rec_inc_variant_builds_and_is_judged(inc: None, tmp_path: Path) -> None:
    if not (OCR_LINES / "calib").is_dir() or not (OCR_LINES / "eval").is_dir():
        _missing(f"no text-line images in {OCR_LINES}")
    recipe = {
        "name": "rec-inc",
        "model": {"package": "rapidocr_onnxruntime", "path": "models/ch_PP-OCRv4_rec_infer.onnx"},
        "inputs": {
            "x": {
                "resize": {"mode": "height", "height": 48, "min_width": 320},
                "scale": "1/255",
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
                "color": "BGR",
                "layout": "NCHW",
            }
        },
        "outputs": {"softmax_11.tmp_0": {"kind": "ctc", "charset_metadata": "character"}},
        "calibration": {"source": {"images": str(OCR_LINES / "calib")}, "samples": 8},
        "evaluation": {"source": {"images": str(OCR_LINES / "eval")}, "samples": 8},
        "variants": {"inc": {"method": "inc"}},
        "gates": [{"metric": "nonfinite", "max": 0}, {"metric": "cosine", "min": 0.95}],
        "bench": {"samples": 1, "rounds": 3, "warmup": 0, "threads": 1},
        "promotion": {"to": "releases"},
    }
    done = run_cli("--recipe", str(write_recipe(tmp_path, recipe)), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr
    variant = _judged(json.loads((tmp_path / "run" / "results.json").read_text()), done.stderr)
    build = variant["build"]
    # The opset-13 upgrade leaves unnamed nodes: without renaming INC fails with KeyError 'Shape'.
    # Every convolution of the model is quantized.
    model = locate(ModelSource.model_validate(recipe["model"]), tmp_path)
    assert build["renamed_nodes"] > 0 and build["quantized_ops"]["QLinearConv"] == _count(model, "Conv")
    # Peak memory is recorded (build_peak_rss_mb) but not judged here: memory claims live in benchmarks/, measured as ratios.
    assert build["build_peak_rss_mb"] > 0
    assert sorted(p.name for p in (tmp_path / "run" / "variants").iterdir()) == ["inc.onnx"]
