"""A family run end to end through the CLI on a tiny encoder–decoder built with onnx.helper (tests/seq2seq_family.py),
fed ready tensors from .npz files, with no vocabulary or generation config (both given in the recipe). The LM head
has one outlier row (a vocabulary entry FP32 never scores, so FP32 reads as without it): int8 decoders keep its other
weights and generate FP32's tokens and are released; int4 blocks round those weights to zero, the family no longer
reads, and it fails; a method that quantizes nothing in any part is `nothing_quantized`, never judged nor released."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import run_cli, write_recipe
from tests.seq2seq_family import DIM, END, LM_SCALE, START, VOCAB, write_family


def _npz(path: Path, values: list[float]) -> Path:
    np.savez(path, pixel_values=np.stack([np.full((3, DIM), v, dtype=np.float32) for v in values]))
    return path


def test_a_tiny_family_run_releases_what_generates_fp32s_tokens(tmp_path: Path) -> None:
    lm_head = np.eye(VOCAB, dtype=np.float32) * LM_SCALE
    lm_head[VOCAB - 1, :] = 1000.0  # the bump at the last id is exp(-(31 - 20)^2) or smaller: FP32 never feels it
    write_family(tmp_path / "model", lm_head=lm_head)
    recipe = {
        "name": "tiny-family",
        "family": {
            "folder": "model",
            "generation": {"vocab": None, "config": None, "start_token": START, "end_token": END, "max_new_tokens": 24},
        },
        "calibration": {"source": {"npz": str(_npz(tmp_path / "calib.npz", [1.0, 5.0, 9.0]))}},
        "evaluation": {"source": {"npz": str(_npz(tmp_path / "eval.npz", [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]))}},
        "variants": {
            "int8-decoders": {"parts": {"decoders": {"method": "weight_only", "bits": 8}}},
            "int4-decoders": {"parts": {"decoders": {"method": "weight_only", "bits": 4}}},
            "conv-only": {"parts": {"all": {"method": "dynamic_int8", "op_types": ["Conv"]}}},
            "static-decoders": {"parts": {"decoders": {"method": "static_int8", "op_types": ["MatMul"]}}},
        },
        "gates": [{"metric": "seq_exact_match", "min": 1.0}, {"metric": "seq_unfinished", "max": 0.0}],
        "bench": {"samples": 1, "rounds": 3, "warmup": 1, "max_rounds": 3},
        "promotion": {"to": "releases"},
    }
    write_recipe(tmp_path, recipe)
    done = run_cli("--recipe", "recipe.yaml", "--out", "run", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    variants = json.loads((tmp_path / "run" / "results.json").read_text())["variants"]
    assert variants["int8-decoders"]["status"] == "passed"
    assert variants["int8-decoders"]["metrics"][""]["seq_exact_match"] == 1.0
    int4 = variants["int4-decoders"]
    assert int4["status"] == "failed" and int4["metrics"][""]["seq_exact_match"] == 0.0
    assert "seq_exact_match" in {g["metric"] for g in int4["gates"] if g["verdict"] == "failed"}
    assert variants["conv-only"]["status"] == "nothing_quantized" and variants["conv-only"]["gates"] == []
    # Static decoders calibrate on the steps of FP32 generation on the calibration tensors (an all-zero past key/value
    # would have been refused: a build error); QDQ pairs in both decoder files, and they still generate FP32's tokens.
    static = variants["static-decoders"]
    assert static["status"] == "passed", static["error"]
    for role in ("decoder", "decoder_with_past"):
        assert static["build"]["parts"][role]["build"]["quantized_ops"]["QuantizeLinear"] > 0
    release = tmp_path / "releases" / "tiny-family" / "v1"
    assert sorted(p.name for p in release.iterdir()) == ["SHA256SUMS", "int8-decoders", "manifest.json", "static-decoders"]
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["family"]["generation"] == {"start_token": START, "end_token": END, "max_new_tokens": 24}
    assert manifest["family"]["assets"] == {}  # no vocabulary or config in the family's folder: none released
