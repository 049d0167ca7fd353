"""Image transforms, sample sources (images, npz), seeded sampling, shape checks, disjointness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quant.calibration.reader import CalibrationReader
from quant.data.feeds import checked_feeds
from quant.data.sources import ImageFolder, NpzTensors, check_disjoint, open_source
from quant.data.transforms import image_to_tensor
from quant.errors import DataError
from quant.recipe.schema import DataSet, ImageInput
from tests.conftest import write_images


def spec(**fields: object) -> ImageInput:
    return ImageInput.model_validate(fields)


def test_fixed_resize_normalises_in_the_declared_colour_order() -> None:
    image = Image.fromarray(np.tile(np.array([255, 0, 51], np.uint8), (10, 20, 1)))
    tensor = image_to_tensor(image, spec(resize={"height": 4, "width": 6}, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], color="BGR"))
    assert tensor.shape == (1, 3, 4, 6) and tensor.dtype == np.float32
    # BGR: channel 0 is blue (51 -> 0.2 -> -0.6), channel 2 is red (255 -> 1.0).
    assert tensor[0, 0].mean() == pytest.approx(51 / 255 * 2 - 1, abs=1e-5)
    assert tensor[0, 2].mean() == pytest.approx(1.0, abs=1e-5)


def test_keep_ratio_pads_with_pad_value() -> None:
    image = Image.new("RGB", (10, 10), (255, 255, 255))
    tensor = image_to_tensor(image, spec(resize={"height": 10, "width": 30, "keep_ratio": True}, pad_value=-7.0, layout="NHWC"))
    assert tensor.shape == (1, 10, 30, 3)
    assert np.all(tensor[0, :, :10] == 1.0) and np.all(tensor[0, :, 10:] == -7.0)


def test_resize_to_height_keeps_ratio_and_pads_to_min_width() -> None:
    narrow = image_to_tensor(Image.new("RGB", (20, 10)), spec(resize={"mode": "height", "height": 48, "min_width": 320}))
    wide = image_to_tensor(Image.new("RGB", (200, 10)), spec(resize={"mode": "height", "height": 48, "min_width": 320, "max_width": 640}))
    assert narrow.shape == (1, 3, 48, 320)
    assert wide.shape == (1, 3, 48, 640)  # 960 squeezed to max_width


@pytest.mark.parametrize(
    ("size", "limit_type", "expected"),
    [((1000, 500), "max", (1, 3, 480, 960)), ((100, 50), "max", (1, 3, 64, 96)), ((100, 50), "min", (1, 3, 736, 1472))],
)
def test_limit_side_rounds_to_multiples(size: tuple[int, int], limit_type: str, expected: tuple[int, ...]) -> None:
    resize = {"mode": "limit_side", "limit": 960 if limit_type == "max" else 736, "limit_type": limit_type, "multiple_of": 32}
    assert image_to_tensor(Image.new("RGB", size), spec(resize=resize)).shape == expected


def _folder_source(folder: Path, samples: int | None = None, seed: int = 0, field: str = "calibration", **inputs: object) -> ImageFolder:
    dataset = DataSet.model_validate({"source": {"images": str(folder)}, "samples": samples, "seed": seed})
    image_input = spec(resize=inputs.get("resize", {"mode": "height", "height": 8, "min_width": 16}))
    return open_source(dataset, Path("."), {"x": image_input}, ["x"], field)  # type: ignore[return-value]


def test_seeded_sampling_is_reproducible_and_seed_dependent(tmp_path: Path) -> None:
    write_images(tmp_path, 30, seed=0)
    first = [s.id for s in _folder_source(tmp_path, samples=10, seed=1).samples]
    again = [s.id for s in _folder_source(tmp_path, samples=10, seed=1).samples]
    other = [s.id for s in _folder_source(tmp_path, samples=10, seed=2).samples]
    assert first == again and first != other and first == sorted(first)


def test_labels_are_attached(tmp_path: Path) -> None:
    write_images(tmp_path, 3, seed=0)
    (tmp_path / "labels.tsv").write_text("img_000.png\thello\nimg_002.png\tworld\n")
    dataset = DataSet.model_validate({"source": {"images": str(tmp_path), "labels": "labels.tsv"}})
    source = open_source(dataset, Path("."), {"x": spec(resize={"height": 8, "width": 8})}, ["x"], "evaluation")
    assert [s.label for s in source.samples] == ["hello", None, "world"]


def test_empty_folder_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError) as caught:
        _folder_source(tmp_path)
    assert caught.value.field == "calibration.source.images" and "no images" in str(caught.value)


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    write_images(tmp_path, 2, seed=0)
    (tmp_path / "img_001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    source = _folder_source(tmp_path)
    with pytest.raises(DataError) as caught:
        list(source)
    assert "img_001.png" in str(caught.value)


def test_wrong_shape_tensor_names_sample_and_input(tmp_path: Path) -> None:
    write_images(tmp_path, 2, seed=0)
    source = _folder_source(tmp_path, resize={"height": 10, "width": 16})
    with pytest.raises(DataError) as caught:
        list(checked_feeds(source, {"x": [1, 3, 8, "W"]}))
    assert "img_000.png" in str(caught.value) and caught.value.field == "inputs.x"


def test_reader_streams_and_rewinds(tmp_path: Path) -> None:
    write_images(tmp_path, 4, seed=0)
    reader = CalibrationReader(_folder_source(tmp_path), {"x": [1, 3, 8, "W"]})
    first = [reader.get_next() for _ in range(5)]
    assert [f is None for f in first] == [False] * 4 + [True]
    reader.rewind()
    assert np.array_equal(reader.get_next()["x"], first[0]["x"])


def test_overlapping_sets_are_refused_even_under_other_names(tmp_path: Path) -> None:
    calib, evaluation = tmp_path / "c", tmp_path / "e"
    write_images(calib, 3, seed=0)
    write_images(evaluation, 3, seed=5)
    (evaluation / "copy.png").write_bytes((calib / "img_001.png").read_bytes())
    with pytest.raises(DataError) as caught:
        check_disjoint(_folder_source(calib), _folder_source(evaluation, field="evaluation"))
    assert "copy.png" in str(caught.value) and caught.value.field == "evaluation.source"
    with pytest.raises(DataError) as caught:
        check_disjoint(_folder_source(evaluation, field="tuning"), _folder_source(evaluation, field="evaluation"))
    assert "also tuning samples" in str(caught.value) and caught.value.field == "evaluation.source"


def test_fingerprint_changes_when_an_image_changes(tmp_path: Path) -> None:
    write_images(tmp_path, 3, seed=0)
    before = _folder_source(tmp_path).fingerprint
    Image.new("RGB", (20, 10), (1, 2, 3)).save(tmp_path / "img_001.png")
    assert _folder_source(tmp_path).fingerprint != before


def _npz_source(path: Path, names: list[str], samples: int | None = None) -> NpzTensors:
    dataset = DataSet.model_validate({"source": {"npz": str(path)}, "samples": samples})
    return open_source(dataset, Path("."), {}, names, "calibration")  # type: ignore[return-value]


def test_npz_source_gives_one_row_per_sample(tmp_path: Path) -> None:
    ids = np.arange(12, dtype=np.int64).reshape(4, 3)
    mask = np.ones((4, 3), np.int64)
    np.savez(tmp_path / "tokens.npz", input_ids=ids, attention_mask=mask)
    source = _npz_source(tmp_path / "tokens.npz", ["input_ids", "attention_mask"])
    feeds = [f for _, f in source]
    assert len(feeds) == 4 and feeds[2]["input_ids"].tolist() == [[6, 7, 8]]


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"other": np.zeros((2, 3))}, "no array for model input"),
        ({"input_ids": np.zeros((2, 3)), "attention_mask": np.zeros((3, 3))}, "same, non-zero"),
    ],
)
def test_npz_source_errors(tmp_path: Path, arrays: dict[str, np.ndarray], words: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=words):
        _npz_source(tmp_path / "bad.npz", ["input_ids", "attention_mask"])
