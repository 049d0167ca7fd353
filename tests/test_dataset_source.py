"""Hugging Face `datasets` sources, read offline from local files: imagefolder and parquet."""

from __future__ import annotations

from pathlib import Path

import datasets  # part of the [test] extra: a missing install must fail, not skip
import numpy as np
import pytest

from quant.data.sources import open_source
from quant.errors import DataError
from quant.recipe.schema import DataSet, ImageInput
from tests.conftest import HEIGHT, base_recipe, run_cli, write_images, write_recipe

SPEC = {"x": ImageInput.model_validate({"resize": {"mode": "height", "height": HEIGHT, "min_width": 16}})}


def _open(source: dict[str, object], samples: int | None = None) -> object:
    dataset = DataSet.model_validate({"source": source, "samples": samples})
    return open_source(dataset, Path("."), SPEC, ["x"], "calibration")


def test_imagefolder_dataset_with_seeded_sampling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    write_images(tmp_path / "train", 8, seed=0)
    source = _open({"dataset": str(tmp_path), "format": "imagefolder"}, samples=5)
    feeds = [f for _, f in source]
    assert len(feeds) == 5 and feeds[0]["x"].shape[:3] == (1, 3, HEIGHT)
    again = _open({"dataset": str(tmp_path), "format": "imagefolder"}, samples=5)
    assert [s.fingerprint for s in source.samples] == [s.fingerprint for s in again.samples]


def test_parquet_dataset_with_labels(tmp_path: Path) -> None:
    rows = []
    for index, path in enumerate(write_images(tmp_path / "img", 4, seed=3)):
        rows.append({"image": {"bytes": path.read_bytes(), "path": None}, "text": f"line {index}"})
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(tmp_path / "data.parquet"))
    source = _open({"dataset": str(tmp_path / "data.parquet"), "format": "parquet", "label_column": "text"})
    assert [s.label for s in source.samples] == ["line 0", "line 1", "line 2", "line 3"]
    assert all(f["x"].dtype == np.float32 for _, f in source)


def test_dataset_errors_name_the_field(tmp_path: Path) -> None:
    write_images(tmp_path / "train", 2, seed=0)
    with pytest.raises(DataError) as column:
        _open({"dataset": str(tmp_path), "format": "imagefolder", "image_column": "picture"})
    assert column.value.field == "calibration.source.image_column" and "picture" in str(column.value)
    with pytest.raises(DataError) as missing:
        _open({"dataset": str(tmp_path / "nope"), "format": "imagefolder"})
    assert missing.value.field == "calibration.source.dataset"


def test_cli_runs_on_a_dataset_and_an_npz_source(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    rng = np.random.default_rng(0)
    np.savez(root / "eval.npz", x=rng.uniform(-1, 1, (6, 1, 3, HEIGHT, 16)).astype(np.float32)[:, 0])
    recipe = base_recipe(
        workspace["model"],
        workspace["calib"],
        workspace["eval"],
        variants={"dyn": {"method": "dynamic_int8", "op_types": ["MatMul"]}, "s": {"method": "static_int8"}},
    )
    recipe["calibration"] = {"source": {"dataset": str(workspace["calib"]), "format": "imagefolder"}}
    recipe["evaluation"] = {"source": {"npz": str(root / "eval.npz")}}
    done = run_cli("--recipe", str(write_recipe(root, recipe)), "--out", str(root / "run"), cwd=root, env={"HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
