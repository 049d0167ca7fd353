"""results.json and manifest.json are typed documents that write themselves and load back the same."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from quant.results import Manifest, RunResults

RESULTS = {
    "schema_version": 1,
    "tool": {"name": "quant", "version": "0.1.0"},
    "started": "2026-12-01T14:00:00+00:00",
    "finished": "2026-12-01T14:05:00+00:00",
    "recipe": {"name": "tiny", "file": "/r/recipe.yaml", "sha256": "ab" * 32, "resolved": {"name": "tiny", "variants": {"fp16": {}}}},
    "model": {"file": "/m/model.onnx", "sha256": "cd" * 32, "size_bytes": 1234, "opset": 17},
    "environment": {"cpu": {"flags": ["avx2"]}, "libraries": {"onnxruntime": "1.32.0"}},
    "data": {
        "calibration": None,
        "tuning": None,
        "evaluation": {"where": "/d/eval", "fingerprint": "ef" * 8, "samples": [{"id": "a.png", "sha256": "01" * 32}]},
        "splits": {"gates": "evaluation", "search": None, "tuned_on_evaluation": False},
    },
    "charsets": {"y": {"metadata": "character", "sha256": "02" * 32}},
    "reference": {"seconds": 1.5, "cache_hit": False},
    "variants": {
        "fp16": {
            "name": "fp16",
            "status": "failed",
            "metrics": {"y": {"cosine": 0.99, "snr_db": math.nan, "max_abs": math.inf}},
            "gates": [{"metric": "cosine", "observed": 0.99, "passed": True}],
        }
    },
    "regression": None,
    "promotion": {
        "policy": "all_passing",
        "met": False,
        "promoted": [],
        "release": None,
        "tracking_uri": "sqlite:///x.db",  # what an MLflow destination adds
        "alias_moved_to": {},
    },
    "verdict": "FAIL: promotion policy 'all_passing' not met; did not pass: fp16",
    "exit_code": 1,
}


def test_results_round_trip_through_json() -> None:
    results = RunResults.model_validate(RESULTS)
    text = results.to_json()
    assert RunResults.from_json(text) == RunResults.from_json(RunResults.from_json(text).to_json())
    loaded = json.loads(text)
    assert list(loaded) == list(RESULTS)  # the fields keep results.json's order
    assert loaded["variants"]["fp16"]["metrics"]["y"] == {"cosine": 0.99, "snr_db": "nan", "max_abs": "inf"}  # standard JSON
    assert loaded["promotion"]["tracking_uri"] == "sqlite:///x.db"
    assert RunResults.from_json(text).promotion.met is False


def test_a_document_without_nan_is_equal_after_the_round_trip() -> None:
    finite = json.loads(json.dumps(RESULTS).replace("NaN", "0.5").replace("Infinity", "2.0"))
    results = RunResults.model_validate(finite)
    assert RunResults.from_json(results.to_json()) == results


def test_an_unknown_or_missing_top_level_field_is_refused() -> None:
    with pytest.raises(ValidationError):
        RunResults.model_validate({**RESULTS, "surprise": 1})
    with pytest.raises(ValidationError):
        RunResults.model_validate({k: v for k, v in RESULTS.items() if k != "verdict"})


def test_manifest_round_trip() -> None:
    manifest = Manifest.model_validate(
        {
            "recipe": {"name": "tiny", "file": "recipe.yaml", "sha256": "ab" * 32, "resolved": {}},
            "source_model": {"file": "model.onnx", "sha256": "cd" * 32, "size_bytes": 10},
            "data": {"evaluation": {"fingerprint": "ef", "samples": 3}},
            "charsets": {},
            "created": "2026-12-01T14:00:00+00:00",
            "environment": {},
            "variants": {
                "fp16": {
                    "method": "fp16",
                    "options": {"keep_io_types": True},
                    "file": "fp16.onnx",
                    "size_ratio": 0.5,
                    "latency_ratio": None,
                    "metrics": {"y": {"cosine": 0.99}, "": {"size_ratio": 0.5}},
                    "gates": [],
                }
            },
        }
    )
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.to_dict()["schema_version"] == 1
