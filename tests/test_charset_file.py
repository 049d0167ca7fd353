"""CTC character lists from a PaddleOCR dictionary file, as well as from model metadata."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from quant.charset import read_dictionary
from quant.errors import DataError
from tests.conftest import base_recipe, run_cli, write_recipe

TEXT_GATES = [{"metric": "label_cer", "max": 10.0}, {"metric": "ctc_exact_match_norm", "min": 0.0}]


def _labelled(workspace: dict[str, Path]) -> None:
    rng = np.random.default_rng(3)
    lines = [f"{p.name}\t{''.join(rng.choice(list('abcde '), 4))}" for p in sorted(workspace["eval"].glob("*.png"))]
    (workspace["eval"] / "labels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _run(workspace: dict[str, Path], output: dict, tag: str) -> tuple[int, dict, str]:
    root = workspace["root"]
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants={"d": {"method": "dynamic_int8"}}, gates=TEXT_GATES)
    recipe["evaluation"] = {"source": {"images": str(workspace["eval"]), "labels": "labels.tsv"}}
    recipe["outputs"] = {"probs": {"kind": "ctc", "ignore_chars": [" "], **output}}
    done = run_cli("--recipe", str(write_recipe(root, recipe, f"{tag}.yaml")), "--out", str(root / tag), cwd=root)
    results = json.loads((root / tag / "results.json").read_text()) if done.returncode in (0, 1) else {}
    return done.returncode, results, done.stderr


def test_dictionary_file_gives_the_metadata_metrics_and_is_hashed(workspace: dict[str, Path]) -> None:
    _labelled(workspace)
    dictionary = workspace["root"] / "tiny_dict.txt"
    dictionary.write_bytes(b"a\r\nb\nc\nd\ne\n")  # the model's metadata list; Windows line ends are fine
    shuffled = workspace["root"] / "other_dict.txt"
    shuffled.write_text("e\nd\nc\nb\na\n", encoding="utf-8")
    code_meta, from_metadata, err = _run(workspace, {"charset_metadata": "character"}, "meta")
    assert code_meta == 0, err
    code_file, from_file, err = _run(workspace, {"charset_file": "tiny_dict.txt"}, "file")
    assert code_file == 0, err
    text_metrics = ("label_cer", "label_cer_reference", "ctc_exact_match_norm", "ctc_cer_norm")
    assert {m: from_file["variants"]["d"]["metrics"]["probs"][m] for m in text_metrics} == {
        m: from_metadata["variants"]["d"]["metrics"]["probs"][m] for m in text_metrics
    }
    _, from_other, _ = _run(workspace, {"charset_file": "other_dict.txt"}, "other")
    assert (
        from_other["variants"]["d"]["metrics"]["probs"]["label_cer_reference"]
        != from_metadata["variants"]["d"]["metrics"]["probs"]["label_cer_reference"]
    )
    sha = hashlib.sha256(dictionary.read_bytes()).hexdigest()
    assert from_file["charsets"] == {"probs": {"file": "tiny_dict.txt", "sha256": sha}}
    manifest = json.loads((Path(from_file["promotion"]["release"]) / "manifest.json").read_text())
    assert manifest["charsets"]["probs"]["sha256"] == sha


def test_missing_dictionary_file_is_bad_input_naming_the_field(workspace: dict[str, Path]) -> None:
    _labelled(workspace)
    code, _, err = _run(workspace, {"charset_file": "missing_dict.txt"}, "missing")
    assert code == 2
    assert "missing_dict.txt" in err and "outputs.probs.charset_file" in err
    assert not (workspace["root"] / "releases").exists()


def test_dictionary_lines_keep_spaces_and_only_lose_line_breaks(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_bytes(b" \nx\r\n\n")  # a space entry, then 'x', then an empty entry
    assert read_dictionary(path, "f") == [" ", "x", ""]
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match="UTF-8"):
        read_dictionary(path, "f")


def test_a_character_list_shorter_than_the_classes_is_refused(workspace: dict[str, Path]) -> None:
    (workspace["root"] / "short_dict.txt").write_text("a\nb\nc\nd\n", encoding="utf-8")  # the model has 6 classes: blank + 5
    code, _, err = _run(workspace, {"charset_file": "short_dict.txt", "use_space_char": False}, "short")
    assert code == 2 and "outputs.probs.charset_file" in err and "5 entries" in err and "6 classes" in err
