"""The shipped OCR data keeps its promises (calibration_data/README.md), and the generator's
geometric degradations move label points exactly as they move the ink."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import rapidocr_onnxruntime
from PIL import Image, ImageDraw

from tests.conftest import REPO

DATA = REPO / "calibration_data"
SPLITS = ("calib", "tune", "eval")
IMAGE_SUFFIXES = {".png", ".jpg"}
sys.path.insert(0, str(REPO / "tools"))  # the generator's modules are scripts, not a package

import ocr_degrade
from ocr_real_lines import LINE_SLICES
from ocr_real_pages import PAGE_SLICES


def _table(path: Path) -> dict[str, str]:
    rows = [line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(len(r) == 2 for r in rows), f"{path}: a row is not 'file<TAB>value'"
    table = dict(rows)
    assert len(table) == len(rows), f"{path}: a file is listed twice"
    return table


def _images(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES}


@pytest.mark.parametrize("kind", ["ocr_lines", "ocr_pages"])
def test_no_image_is_in_two_splits(kind: str) -> None:
    owner: dict[str, str] = {}
    for split in SPLITS:
        for name in _images(DATA / kind / split):
            digest = hashlib.sha256((DATA / kind / split / name).read_bytes()).hexdigest()
            assert digest not in owner, f"{kind}/{split}/{name} is the same image as {owner[digest]}"
            owner[digest] = f"{split}/{name}"


def test_no_line_text_is_in_two_splits() -> None:
    texts = {split: set(_table(DATA / "ocr_lines" / split / "labels.tsv").values()) for split in SPLITS}
    for a, b in (("calib", "tune"), ("calib", "eval"), ("tune", "eval")):
        assert not texts[a] & texts[b], f"{a} and {b} share line texts, e.g. {sorted(texts[a] & texts[b])[:3]}"


@pytest.mark.parametrize(
    ("kind", "split", "minimum", "per_slice", "slices"),
    [
        ("ocr_lines", "eval", 400, 30, {*LINE_SLICES, "det_crop"}),
        ("ocr_lines", "tune", 150, 11, {*LINE_SLICES, "det_crop"}),
        ("ocr_pages", "eval", 40, 4, set(PAGE_SLICES)),
        ("ocr_pages", "tune", 16, 2, set(PAGE_SLICES)),
    ],
)
def test_realistic_splits_are_labelled_and_sliced(kind: str, split: str, minimum: int, per_slice: int, slices: set[str]) -> None:
    folder = DATA / kind / split
    images = _images(folder)
    labels, sliced = _table(folder / "labels.tsv"), _table(folder / "slices.tsv")
    assert len(images) >= minimum
    assert set(labels) == images and set(sliced) == images
    counts = Counter(sliced.values())
    assert set(counts) == slices
    assert min(counts.values()) >= per_slice, counts


def test_every_label_character_can_be_read_by_the_rec_model() -> None:
    model = onnx.load(str(Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx"), load_external_data=False)
    dictionary = {c for p in model.metadata_props if p.key == "character" for c in p.value.splitlines()} | {" "}
    for split in SPLITS:
        for name, text in _table(DATA / "ocr_lines" / split / "labels.tsv").items():
            assert text and not set(text) - dictionary, f"{split}/{name}: {set(text) - dictionary}"


@pytest.mark.parametrize("split", SPLITS)
def test_page_boxes_lie_on_their_page(split: str) -> None:
    folder = DATA / "ocr_pages" / split
    for name, raw in _table(folder / "labels.tsv").items():
        width, height = Image.open(folder / name).size
        items = json.loads(raw)
        assert items, f"{split}/{name} has no text box"
        for item in items:
            assert item["transcription"] and len(item["points"]) == 4
            assert all(0 <= x < width and 0 <= y < height for x, y in item["points"]), f"{split}/{name}: {item}"


# Each data set its own budget (MiB), so a new example's data cannot quietly eat the OCR sets' room.
DATA_BUDGET_MIB = {"ocr_lines": 7.0, "ocr_pages": 6.5, "seq2seq_lines": 3.0, "vad": 3.5, "magika": 0.5, "ocr_orientation": 2.6}


def _mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def test_the_data_stays_small() -> None:
    folders = {p.name for p in DATA.iterdir() if p.is_dir()}
    assert folders <= DATA_BUDGET_MIB.keys(), f"data sets without a size budget: {folders - DATA_BUDGET_MIB.keys()}"
    over = {name: round(_mib(DATA / name), 2) for name in folders if _mib(DATA / name) > DATA_BUDGET_MIB[name]}
    assert not over, f"over budget (MiB): {over}"
    assert _mib(DATA) <= 20, f"calibration_data holds {_mib(DATA):.1f} MiB"


def _dot_centre(mask: Image.Image) -> tuple[float, float]:
    pixels = np.asarray(mask, np.float64)
    ys, xs = np.mgrid[0 : pixels.shape[0], 0 : pixels.shape[1]]
    return float((xs * pixels).sum() / pixels.sum()), float((ys * pixels).sum() / pixels.sum())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("effect", ["rotation", "perspective"])
def test_geometric_degradations_move_points_with_the_ink(effect: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    width, height = 300, 120
    x, y = float(rng.uniform(40, width - 40)), float(rng.uniform(20, height - 20))
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse((x - 3, y - 3, x + 3, y + 3), fill=255)
    x, y = _dot_centre(mask)  # the drawn dot's exact centre
    if effect == "rotation":
        (moved,), move, _ = ocr_degrade.rotate_layers([mask], rng, max_deg=8.0, min_deg=3.0)
    else:
        (moved,), move = ocr_degrade.warp_layers([mask], ocr_degrade.keystone_corners(rng, width, height, 0.4))
    mx, my = move(x, y)
    cx, cy = _dot_centre(moved)
    assert math.hypot(mx - cx, my - cy) < 1.0, f"label point at {(mx, my)}, ink at {(cx, cy)}"
