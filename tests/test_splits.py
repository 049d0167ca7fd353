"""Never judge on what you tuned on: the search chooses on the tuning split, the gates judge on the
evaluation split it never read, and a recipe that would tune on the gate split is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
from PIL import Image

from quant.recipe.schema import Recipe
from quant.splits import choosing_variants
from tests.conftest import base_recipe, run_cli, tiny_ctc_model, write_recipe

BROKEN_INT8 = {"method": "static_int8", "per_channel": False, "op_types": ["Conv", "MatMul"], "fallback": {"max_nodes": 2, "samples": 4}}
TEXT_GATE = [{"metric": "ctc_exact_match", "min": 0.9}]


def _plain_evaluation(folder: Path) -> None:
    """Flat grey lines: the broken INT8 model reads them exactly as FP32 does, with no node in float."""
    shutil.rmtree(folder)
    folder.mkdir()
    for index in range(10):
        Image.new("RGB", (20 + 2 * index, 12), (200 + 5 * index,) * 3).save(folder / f"plain_{index}.png")


def test_the_search_chooses_on_the_tuning_split_and_never_reads_the_gate_split(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    onnx.save(tiny_ctc_model(weight_outlier=True), str(workspace["model"]))
    _plain_evaluation(workspace["eval"])
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants={"int8": BROKEN_INT8}, gates=TEXT_GATE)
    # Tuned on the evaluation split (allowed explicitly), the search stops at once: those lines are easy.
    path = write_recipe(root, recipe, "eval.yaml")
    on_eval = run_cli("--recipe", str(path), "--out", str(root / "on-eval"), "--allow-tuning-on-evaluation", cwd=root)
    assert on_eval.returncode == 0, on_eval.stderr
    loud = json.loads((root / "on-eval" / "results.json").read_text())
    assert loud["data"]["splits"] == {"gates": "evaluation", "search": "evaluation", "tuned_on_evaluation": True}
    assert "tuned on the evaluation set" in loud["verdict"] and "tuned on the evaluation set" in on_eval.stdout
    assert loud["variants"]["int8"]["search"]["chosen_nodes_in_float"] == 0
    # With a tuning split of striped lines the broken conv shows, so the search keeps it in float:
    # a choice the evaluation split could not have led to.
    tuned = {**recipe, "tuning": {"source": {"images": str(workspace["tune"])}}}
    done = run_cli("--recipe", str(write_recipe(root, tuned, "tuned.yaml")), "--out", str(root / "tuned"), cwd=root)
    assert done.returncode == 0, done.stderr
    results = json.loads((root / "tuned" / "results.json").read_text())
    variant, search = results["variants"]["int8"], results["variants"]["int8"]["search"]
    assert search["chosen_nodes_in_float"] == 1 and search["attempts"][1]["excluded"] == ["conv1"]
    assert [a["split"] for a in search["attempts"]] == ["tuning", "tuning"] and search["tuned_on"] == "tuning"
    tuning_ids = {s["id"] for s in results["data"]["tuning"]["samples"]}
    evaluation_ids = {s["id"] for s in results["data"]["evaluation"]["samples"]}
    assert set(search["ranked_on"]) <= tuning_ids and not set(search["ranked_on"]) & evaluation_ids
    # The variant's verdict is the evaluation split's, on every one of its lines.
    assert variant["judged_on"] == "evaluation" and results["data"]["splits"]["gates"] == "evaluation"
    assert variant["intervals"]["probs"]["ctc_exact_match"]["samples"] == len(evaluation_ids) == 10


def test_a_search_without_a_tuning_split_is_refused_naming_the_field(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants={"int8": BROKEN_INT8}))
    refused = run_cli("--recipe", str(path), "--validate", cwd=root)
    assert refused.returncode == 2 and "tuning" in refused.stderr and "--allow-tuning-on-evaluation" in refused.stderr, refused.stderr
    assert "'int8'" in refused.stderr
    assert run_cli("--recipe", str(path), "--validate", "--allow-tuning-on-evaluation", cwd=root).returncode == 0


def test_tuning_must_not_share_a_sample_with_calibration_or_evaluation(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    shutil.copy(next(workspace["eval"].glob("*.png")), workspace["tune"] / "copied.png")
    recipe = {**base_recipe(workspace["model"], workspace["calib"], workspace["eval"]), "tuning": {"source": {"images": str(workspace["tune"])}}}
    refused = run_cli("--recipe", str(write_recipe(root, recipe)), "--validate", cwd=root)
    assert refused.returncode == 2 and "evaluation.source" in refused.stderr and "also tuning samples" in refused.stderr, refused.stderr
    (workspace["tune"] / "copied.png").unlink()
    shutil.copy(next(workspace["calib"].glob("*.png")), workspace["tune"] / "from-calib.png")
    refused = run_cli("--recipe", str(write_recipe(root, recipe)), "--validate", cwd=root)
    assert refused.returncode == 2 and "tuning.source" in refused.stderr and "also calibration samples" in refused.stderr, refused.stderr


def test_which_variants_choose_from_data(workspace: dict[str, Path]) -> None:
    variants = {
        "searched": BROKEN_INT8,
        "fixed": {"method": "static_int8"},
        "inc-tuned": {"method": "inc", "tune": True},
        "inc": {"method": "inc"},
        "half": {"method": "fp16"},
    }
    recipe = Recipe.model_validate(base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants=variants))
    assert choosing_variants(recipe, tuple(variants)) == ["searched", "inc-tuned"]
    assert choosing_variants(recipe, ("fixed", "half")) == []
