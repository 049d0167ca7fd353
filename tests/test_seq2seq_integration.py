"""The shipped family recipe on the trained encoder–decoder OCR model (models/seq2seq-ocr), end to end through the CLI:
int8 decoders agree with FP32's text and are released whole (every part, the vocabulary and config, one manifest
saying which method each part got); int4 on every part including the LM head reads further from FP32 and fails its
text gate with the reason in the summary and JUnit; the lock file pins every part and rebuilds as a recipe.
24 held-out lines, two variants: a fast subset, not a benchmark (latency is not gated here)."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import onnx
import pytest

from quant.recipe.family import FamilyRecipe
from quant.recipe.loader import load_recipe
from quant.seq2seq.checks import check_family_inputs
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.integration

RECIPE = f"""
extends: {REPO / 'recipes' / 'edge-cpu-seq2seq.yaml'}
name: seq2seq-it
evaluation: {{source: {{images: {REPO / 'calibration_data' / 'seq2seq_lines' / 'eval'}, labels: labels.tsv}}, samples: 24}}
variants: {{fp16: null, int8-dynamic: null, int4-wo: null, int8-static-enc: null}}
gates:
  - {{metric: seq_exact_match, min: 0.95}}
  - {{metric: seq_label_cer_delta, max: 0.003}}
bench: {{samples: 1, rounds: 3, warmup: 1, max_rounds: 3}}
promotion: {{to: releases}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("seq2seq")
    (root / "recipe.yaml").write_text(RECIPE, encoding="utf-8")
    done = run_cli("--recipe", "recipe.yaml", "--out", "run", "--junit", "junit.xml", "--quiet", cwd=root)
    return {"root": root, "done": done, "results": json.loads((root / "run" / "results.json").read_text())}


def test_int8_decoders_pass_and_int4_everywhere_fails_its_text_gate(run: dict[str, object]) -> None:
    done, results = run["done"], run["results"]
    assert isinstance(done, subprocess.CompletedProcess) and isinstance(results, dict)
    assert done.returncode == 0, done.stderr  # policy all_passing: met by int8-wo
    int8, int4 = results["variants"]["int8-wo"], results["variants"]["int4-wo-all"]
    assert int8["status"] == "passed" and int4["status"] == "failed"
    assert int8["metrics"][""]["seq_exact_match"] >= 0.95 and int8["intervals"][""]["seq_exact_match"]["samples"] == 24
    assert int4["metrics"][""]["seq_cer_vs_fp32"] > int8["metrics"][""]["seq_cer_vs_fp32"]
    assert int4["metrics"][""]["teacher_forced_kl"] > int8["metrics"][""]["teacher_forced_kl"]
    failed = [g for g in int4["gates"] if g["verdict"] == "failed"]
    assert "seq_exact_match" in [g["metric"] for g in failed]
    assert "int4-wo-all | weight_only | FAIL" in done.stdout and "seq_exact_match = " in done.stdout
    assert int8["size_ratio"] < 0.6 and int4["size_ratio"] < 0.3  # the whole family's files
    junit = ET.parse(Path(str(run["root"])) / "junit.xml").getroot()
    failures = [case.get("classname") for case in junit.iter("testcase") if case.find("failure") is not None]
    assert set(failures) == {"quant.seq2seq-it.int4-wo-all"}


def test_the_release_holds_the_whole_family_with_one_manifest_of_methods_per_part(run: dict[str, object]) -> None:
    root = Path(str(run["root"]))
    version = root / "releases" / "seq2seq-it" / "v1"
    assert sorted(p.name for p in version.iterdir()) == ["SHA256SUMS", "int8-wo", "manifest.json"]
    files = {"encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx", "vocab.json", "generation_config.json"}
    assert {p.name for p in (version / "int8-wo").iterdir()} == files
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=version, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    manifest = json.loads((version / "manifest.json").read_text())
    parts = manifest["variants"]["int8-wo"]["parts"]
    assert {role: part["method"] for role, part in parts.items()} == {"encoder": "fp32", "decoder": "weight_only", "decoder_with_past": "weight_only"}
    assert parts["decoder"]["options"]["bits"] == 8 and parts["decoder"]["build"]["quantized_ops"]["MatMulNBits"] > 0
    source = REPO / "models" / "seq2seq-ocr" / "encoder_model.onnx"
    released = onnx.load(str(version / "int8-wo" / "encoder_model.onnx"))
    assert released.graph == onnx.load(str(source)).graph  # an FP32 part is released as it is, with traceability metadata
    assert {p.key: p.value for p in released.metadata_props}["quant.part"] == "encoder"
    assert set(manifest["family"]["parts"]) == {"encoder", "decoder", "decoder_with_past"}


def test_the_lock_file_pins_every_part_and_is_a_valid_recipe(run: dict[str, object]) -> None:
    lock = Path(str(run["root"])) / "run" / "recipe.lock.yaml"
    loaded = load_recipe(str(lock))
    assert isinstance(loaded.recipe, FamilyRecipe)
    pinned = {role: part.sha256 for role, part in loaded.recipe.family.parts.items()}
    inputs = check_family_inputs(loaded)  # the pinned hashes match the files
    assert pinned == {role: info.sha256 for role, info in inputs.family.parts.items()}
    int4 = loaded.recipe.variants["int4-wo-all"].parts
    assert set(int4) == {"encoder", "decoder", "decoder_with_past"}  # the `all` group written out part by part
    assert loaded.recipe.variants["int8-wo"].resolved()["decoder"].bits == 8
    assert loaded.recipe.family.generation.max_new_tokens == 49
