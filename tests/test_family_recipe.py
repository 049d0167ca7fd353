"""Family recipes (an encoder–decoder named part by part): what a variant gives each part, and every kind of bad
input refused before anything is built with one message naming the file and the field (exit 2)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from quant.errors import InputError
from quant.recipe.family import FamilyRecipe, FamilyVariant
from quant.recipe.loader import load_recipe
from quant.seq2seq.checks import check_family_inputs
from tests.conftest import REPO, run_cli, write_recipe

MODEL = REPO / "models" / "seq2seq-ocr"
LINES = REPO / "calibration_data" / "seq2seq_lines"
PIXELS = {"resize": {"mode": "height", "height": 32, "multiple_of": 8, "max_width": 384}, "mean": 0.5, "std": 0.5}


def family_recipe(folder: Path = MODEL, **overrides: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "name": "family",
        "family": {"folder": str(folder)},
        "inputs": {"pixel_values": PIXELS},
        "evaluation": {"source": {"images": str(LINES / "eval"), "labels": "labels.tsv"}, "samples": 8},
        "variants": {"wo": {"parts": {"decoders": {"method": "weight_only", "bits": 8}}}},
        "gates": [{"metric": "seq_exact_match", "min": 0.9}],
    }
    recipe.update(overrides)
    return recipe


def refusal(tmp_path: Path, recipe: dict[str, Any]) -> InputError:
    """The bad-input error the recipe gets, from loading or from the checks before any build."""
    path = write_recipe(tmp_path, recipe)
    with pytest.raises(InputError) as caught:
        check_family_inputs(load_recipe(str(path)))
    return caught.value


def test_a_variant_gives_each_part_its_own_entry_else_its_groups() -> None:
    variant = FamilyVariant.model_validate(
        {"parts": {"all": {"method": "fp16"}, "decoders": {"method": "weight_only", "bits": 4}, "decoder_with_past": {"method": "dynamic_int8"}}}
    )
    chosen = {role: options.method for role, options in variant.resolved().items()}
    assert chosen == {"encoder": "fp16", "decoder": "weight_only", "decoder_with_past": "dynamic_int8"}
    only_decoders = FamilyVariant.model_validate({"parts": {"decoders": {"method": "weight_only"}}}).resolved()
    assert set(only_decoders) == {"decoder", "decoder_with_past"}  # the encoder stays FP32


def test_the_shipped_family_recipe_resolves_generation_from_the_models_files() -> None:
    loaded = load_recipe(str(REPO / "recipes" / "edge-cpu-seq2seq.yaml"))
    assert isinstance(loaded.recipe, FamilyRecipe)
    inputs = check_family_inputs(loaded)
    generation = inputs.family.generation
    assert (generation.start_token, generation.end_token, generation.max_new_tokens) == (1, 2, 49)  # generation_config.json
    assert inputs.family.vocabulary.decode([1, 13, 14, 2]) == "ab"  # vocab.json; <s> and </s> are not text
    assert set(inputs.family.assets) == {"vocab.json", "generation_config.json"}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"family": {"folder": str(MODEL), "parts": {"encoder": {"path": "encoder_model.onnx"}, "decoder_merged": {"path": "m.onnx"}}}},
         "family.parts", "merged decoder"),
        ({"family": {"folder": str(MODEL), "parts": {"encoder": {"path": "encoder_model.onnx"}}}}, "family.parts", "missing"),
        ({"variants": {"v": {"parts": {"decoder_merged": {"method": "fp16"}}}}}, "variants.v.parts", "merged decoder"),
        ({"variants": {"v": {"parts": {"text": {"method": "fp16"}}}}}, "variants.v.parts", "unknown part 'text'"),
        ({"variants": {"v": {"parts": {"all": {"method": "int4"}}}}}, "variants.v.parts.all", "must be one of"),
        ({"variants": {"v": {"parts": {"all": {"method": "inc"}}}}}, "variants.v.parts.all", "must be one of"),
        ({"variants": {"v": {"parts": {"decoders": {"method": "weight_only", "gates": [{"metric": "size_ratio", "max": 1}]}}}}},
         "variants.v.parts", "gates belong to the variant"),
        ({"variants": {"v": {"parts": {"encoder": {"method": "static_int8"}}}}}, "variants", "need a 'calibration'"),
        ({"variants": {"v": {"parts": {}}}}, "variants.v.parts", "at least one part"),
        ({"family": {"folder": str(MODEL), "generation": {"start_token": "<start>"}}}, "family.generation.start_token", "not in the vocabulary"),
        ({"family": {"folder": str(MODEL), "generation": {"end_token": 500}}}, "family.generation.end_token", "outside the decoder's 98 logits"),
        ({"family": {"folder": str(MODEL), "generation": {"vocab": "tokens.json"}}}, "family.generation.vocab", "not found"),
        ({"family": {"folder": str(MODEL / "missing")}}, "family.folder", "folder is not found"),
        ({"family": {"folder": str(MODEL), "generation": {"config": None, "start_token": "<s>", "end_token": "</s>"}}},
         "family.generation.max_new_tokens", "no generation_config.json"),
        ({"family": {"folder": str(MODEL), "parts": {
            "encoder": {"path": "encoder_model.onnx", "sha256": "0" * 64},
            "decoder": {"path": "decoder_model.onnx"}, "decoder_with_past": {"path": "decoder_with_past_model.onnx"}}}},
         "family.parts.encoder.sha256", "the recipe pins"),
        ({"family": {"folder": str(MODEL), "parts": {
            "encoder": {"path": "encoder_model.onnx"}, "decoder": {"path": "decoder_with_past_model.onnx"},
            "decoder_with_past": {"path": "decoder_with_past_model.onnx"}}}},
         "family.parts.decoder.path", "no input 'encoder_hidden_states'"),
        ({"gates": [{"metric": "ctc_exact_match", "min": 0.9}]}, "gates[0].metric", "not measured on a model family"),
        ({"gates": [{"metric": "seq_exact_match", "min": 0.9, "output": "logits"}]}, "gates[0].output", "no named outputs"),
        ({"gates": [{"metric": "seq_exact_match", "min": 0.95, "must_clear": "interval"}]}, "gates[0].min", "can never pass"),
        ({"inputs": {"image": PIXELS}}, "inputs.image", "the encoder has no input 'image'"),
        ({"promotion": {"to": "mlflow", "tracking_uri": "sqlite:///m.db", "model_name": "x"}}, "promotion", "does not take model families"),
        ({"model": {"path": "x.onnx"}}, "model", "unknown key"),
        ({"variants": {"v": {"parts": {"all": {"method": "weight_only", "overrides": {"/decoder/lm_head/MatMul": {"bits": 8}}}}}}},
         "variants.v.parts.all.overrides", "in the encoder part (encoder_model.onnx); name the parts that have it instead of 'all'"),
        ({"variants": {"v": {"parts": {"decoders": {"method": "weight_only", "exclude_nodes": ["/lm_head/MatMul"]}}}}},
         "variants.v.parts.decoders.exclude_nodes", "no MatMul node named ['/lm_head/MatMul'] in the decoder part"),
    ],
)  # fmt: skip
def test_bad_family_input_is_refused_naming_the_field(tmp_path: Path, change: dict[str, Any], field: str, words: str) -> None:
    error = refusal(tmp_path, family_recipe(**change))
    assert error.field == field, str(error)
    assert words in error.detail
    assert error.file is not None


def _merged_decoder(path: Path) -> None:
    """A decoder in optimum's merged form: both paths under an If on use_cache_branch."""
    out = helper.make_tensor_value_info("out", TensorProto.INT64, [1, "T"])
    branch = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["out"])], "branch", [], [out])
    graph = helper.make_graph(
        [helper.make_node("If", ["use_cache_branch"], ["logits"], then_branch=branch, else_branch=branch)],
        "merged",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "T"]),
         helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])],
        [helper.make_tensor_value_info("logits", TensorProto.INT64, [1, "T"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_a_merged_decoder_file_is_refused_by_the_cli_naming_file_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(MODEL, folder)
    _merged_decoder(folder / "decoder_model.onnx")
    path = write_recipe(tmp_path, family_recipe(folder))
    done = run_cli("--recipe", str(path), "--validate", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1
    assert str(folder / "decoder_model.onnx") in line and "field 'family.parts.decoder.path'" in line and "merged decoder" in line
    assert not (tmp_path / "runs").exists()
