"""The calibration cache: keyed by model bytes, sample contents and settings; reused, and invalidated by any change."""

from __future__ import annotations

from pathlib import Path

import onnx
from PIL import Image

from quant.calibration.ranges import calibration_ranges
from quant.calibration.sources import open_source
from quant.model import file_sha256
from quant.recipe.schema import DataSet, ImageInput
from tests.conftest import HEIGHT, tiny_ctc_model, write_images

SPEC = {"x": ImageInput.model_validate({"resize": {"mode": "height", "height": HEIGHT, "min_width": 16}})}
INPUTS = {"x": [1, 3, HEIGHT, "W"]}


def _ranges(model: Path, folder: Path, cache: Path, method: str = "minmax", percentile: float = 99.999) -> object:
    source = open_source(DataSet.model_validate({"source": {"images": str(folder)}}), Path("."), SPEC, ["x"], "calibration")
    return calibration_ranges(model, file_sha256(model), source, INPUTS, method=method, percentile=percentile, op_types=None, cache_dir=cache, log=lambda _: None)


def test_cache_is_reused_and_invalidated_by_data_model_and_settings(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(tiny_ctc_model(), str(model))
    images = tmp_path / "calib"
    write_images(images, 6, seed=0)
    cache = tmp_path / "cache"
    first = _ranges(model, images, cache)
    assert not first.cache_hit and first.cache_file.is_file()
    second = _ranges(model, images, cache)
    assert second.cache_hit and second.cache_file == first.cache_file
    Image.new("RGB", (30, 12), (9, 9, 9)).save(images / "img_002.png")  # one image changes
    changed_data = _ranges(model, images, cache)
    assert not changed_data.cache_hit and changed_data.key != first.key
    assert not _ranges(model, images, cache, method="percentile").cache_hit
    assert not _ranges(model, images, cache, method="percentile", percentile=99.9).cache_hit
    onnx.save(tiny_ctc_model(seed=1), str(model))  # other weights, same graph and tensor names
    assert not _ranges(model, images, cache).cache_hit
    assert len(list((cache / "calibration").glob("*.json"))) == 5
