"""The `quantize` command end to end on a tiny model: exit codes, reports, releases."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import onnx
import pytest

from quant.results import RunResults
from tests.conftest import base_recipe, run_cli, tiny_ctc_model, write_recipe


def releases(root: Path) -> list[Path]:
    folder = root / "releases"
    return sorted(p for p in folder.rglob("*") if p.is_dir()) if folder.exists() else []


def test_passing_run_promotes_a_verifiable_release(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    recipe = base_recipe(
        workspace["model"],
        workspace["calib"],
        workspace["eval"],
        variants={"fp16": {"method": "fp16"}, "dyn": {"method": "dynamic_int8", "op_types": ["MatMul"]}},
    )
    path = write_recipe(root, recipe)
    done = run_cli("--recipe", str(path), "--out", str(root / "run"), "--json", str(root / "out.json"), cwd=root)
    assert done.returncode == 0, done.stderr
    release = root / "releases" / "tiny" / "v1"
    assert sorted(p.name for p in release.iterdir()) == ["SHA256SUMS", "dyn.onnx", "fp16.onnx", "manifest.json"]
    assert subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=release, capture_output=True).returncode == 0
    listed = sorted(line.split("  ", 1)[1] for line in (release / "SHA256SUMS").read_text().splitlines())
    assert listed == ["dyn.onnx", "fp16.onnx", "manifest.json"]  # every file but itself, the manifest too
    assert not list(release.parent.glob(".staging-*"))
    manifest_text = (release / "manifest.json").read_text()
    manifest = json.loads(manifest_text)
    assert manifest_text == json.dumps(manifest, indent=2) + "\n"  # the layout README promises: diffable between versions
    assert manifest["source_model"]["sha256"] and set(manifest["variants"]) == {"fp16", "dyn"}
    assert all(g["passed"] for v in manifest["variants"].values() for g in v["gates"])
    metadata = {p.key: p.value for p in onnx.load(str(release / "fp16.onnx")).metadata_props}
    assert metadata["quant.variant"] == "fp16" and metadata["quant.source_sha256"] == manifest["source_model"]["sha256"]
    results = json.loads((root / "out.json").read_text())
    assert results["schema_version"] == 1 and results["exit_code"] == 0
    assert results == json.loads((root / "run" / "results.json").read_text())
    text = (root / "run" / "results.json").read_text()
    assert RunResults.from_json(text).to_json() == text  # a real run's results load back typed and write the same bytes
    assert "| fp16 | fp16 | PASS |" in done.stdout and (root / "run" / "summary.md").is_file()
    # A second run makes v2 and leaves v1 alone.
    again = run_cli("--recipe", str(path), "--out", str(root / "run"), "--only", "fp16", cwd=root)
    assert again.returncode == 0, again.stderr
    assert (root / "releases" / "tiny" / "v2" / "fp16.onnx").is_file()
    assert (release / "dyn.onnx").is_file()


def test_broken_variant_fails_its_gates_and_nothing_is_released(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    onnx.save(tiny_ctc_model(weight_outlier=True), str(workspace["model"]))
    variants = {"per-tensor": {"method": "dynamic_int8", "op_types": ["Conv"], "per_channel": False}}
    gates = [{"metric": "ctc_exact_match", "min": 0.9}, {"metric": "cosine", "min": 0.99}]
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants=variants, gates=gates))
    done = run_cli("--recipe", str(path), "--out", str(root / "run"), cwd=root)
    assert done.returncode == 1, done.stderr
    results = json.loads((root / "run" / "results.json").read_text())
    gate_results = {g["metric"]: g for g in results["variants"]["per-tensor"]["gates"]}
    assert not gate_results["ctc_exact_match"]["passed"] and gate_results["ctc_exact_match"]["observed"] < 0.9
    assert "FAIL" in done.stdout and "ctc_exact_match" in done.stdout
    assert releases(root) == []
    # The same method on the healthy model keeps its answers: the gates tell the two apart.
    onnx.save(tiny_ctc_model(), str(workspace["model"]))
    assert run_cli("--recipe", str(path), "--out", str(root / "run2"), cwd=root).returncode == 0


def test_all_or_nothing_policy_releases_nothing_when_one_variant_fails(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    recipe = base_recipe(
        workspace["model"], workspace["calib"], workspace["eval"],
        variants={"fp16": {"method": "fp16"}, "tight": {"method": "dynamic_int8", "gates": [{"metric": "size_ratio", "max": 0.01}]}},
        promotion={"to": "releases", "policy": "all_or_nothing"},
    )
    done = run_cli("--recipe", str(write_recipe(root, recipe)), "--out", str(root / "run"), cwd=root)
    assert done.returncode == 1
    assert "size_ratio" in done.stdout and releases(root) == []


def test_validate_checks_everything_and_writes_nothing(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"]))
    done = run_cli("--recipe", str(path), "--validate", "--out", str(root / "run"), cwd=root)
    assert done.returncode == 0 and "valid" in done.stdout
    assert not (root / "run").exists() and releases(root) == []


@pytest.mark.parametrize(
    ("breakage", "words"),
    [
        ("recipe", "variants.fp16.keep_io_typ"),
        ("model", "model file not found"),
        ("empty_folder", "no images"),
        ("overlap", "must be disjoint"),
        ("input_name", "inputs.y"),
        ("gate_metric", "gates[0].metric"),
        ("only", "--only"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_release(workspace: dict[str, Path], breakage: str, words: str) -> None:
    root = workspace["root"]
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"])
    args: list[str] = []
    if breakage == "recipe":
        recipe["variants"]["fp16"]["keep_io_typ"] = True
    elif breakage == "model":
        recipe["model"]["path"] = str(root / "missing.onnx")
    elif breakage == "empty_folder":
        (root / "empty").mkdir()
        recipe["evaluation"]["source"]["images"] = str(root / "empty")
    elif breakage == "overlap":
        recipe["evaluation"]["source"]["images"] = str(workspace["calib"])
    elif breakage == "input_name":
        recipe["inputs"]["y"] = recipe["inputs"].pop("x")
    elif breakage == "gate_metric":
        recipe["gates"] = [{"metric": "map_iou", "min": 0.9}]
    elif breakage == "only":
        args = ["--only", "nope"]
    done = run_cli("--recipe", str(write_recipe(root, recipe)), "--out", str(root / "run"), *args, cwd=root)
    assert done.returncode == 2, done.stderr
    error_lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1 and error_lines[0].startswith("quantize: error:"), done.stderr
    assert words in error_lines[0]
    assert "Traceback" not in done.stderr
    assert releases(root) == []


def test_missing_recipe_option_exits_2(tmp_path: Path) -> None:
    assert run_cli(cwd=tmp_path).returncode == 2


def test_schema_command_prints_the_json_schema(tmp_path: Path) -> None:
    done = run_cli("schema", cwd=tmp_path)
    schema = json.loads(done.stdout)
    kinds = [branch["$ref"].rsplit("/", 1)[-1] for branch in schema["anyOf"]]  # one-model and family recipes
    assert done.returncode == 0 and kinds == ["Recipe", "FamilyRecipe"]
    assert all("variants" in schema["$defs"][kind]["properties"] for kind in kinds)


def test_verbose_logs_every_gate_on_stderr_and_quiet_logs_nothing(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    gates = [{"metric": "cosine", "min": 0.9}, {"metric": "size_ratio", "max": 0.01}]
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], gates=gates))
    verbose = run_cli("--recipe", str(path), "--out", str(root / "run"), "--verbose", cwd=root)
    assert verbose.returncode == 1, verbose.stderr
    gate_lines = [line for line in verbose.stderr.splitlines() if line.startswith("fp16:   ")]
    assert any(line.startswith("fp16:   pass cosine") for line in gate_lines), verbose.stderr
    assert any(line.startswith("fp16:   FAIL size_ratio") and "<= 0.01" in line for line in gate_lines), verbose.stderr
    assert "fp16:   " not in verbose.stdout and "| fp16 | fp16 | FAIL |" in verbose.stdout  # logs on stderr, the summary on stdout
    normal = run_cli("--recipe", str(path), "--out", str(root / "run2"), cwd=root)
    assert "fp16: FAILED" in normal.stderr and "fp16:   " not in normal.stderr
    quiet = run_cli("--recipe", str(path), "--out", str(root / "run3"), "--quiet", cwd=root)
    assert quiet.stderr == "" and "| fp16 | fp16 | FAIL |" in quiet.stdout
    both = run_cli("--recipe", str(path), "--quiet", "--verbose", cwd=root)
    assert both.returncode == 2 and "--quiet and --verbose" in both.stderr


def test_stdout_holds_the_summary_alone_even_when_onnxruntime_prints(workspace: dict[str, Path]) -> None:
    # onnxruntime's Entropy calibrator print()s its settings ("Number of tensors : ...") from inside the build.
    root = workspace["root"]
    variants = {"entropy": {"method": "static_int8", "calibrate": "entropy"}}
    path = write_recipe(root, base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants=variants))
    done = run_cli("--recipe", str(path), "--out", str(root / "run"), "--quiet", cwd=root)
    assert done.returncode in (0, 1), done.stderr
    assert done.stdout.startswith("## quant: tiny") and done.stdout.strip() == (root / "run" / "summary.md").read_text().strip()
    assert "Number of" not in done.stdout + done.stderr
