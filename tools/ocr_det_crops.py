#!/usr/bin/env python3
"""Add rec lines cut from the realistic pages by the FP32 det model, as RapidOCR feeds rec (slice `det_crop`).

For each page of ocr_pages/<split>, RapidOCR's own det (FP32 PP-OCRv4, its pre- and post-processing)
finds boxes; RapidOCR's own `get_crop_img_list` cuts them (perspective crop, replicated border).
A crop is labelled with the text of the labelled box it covers: at least 80 % of that box inside
the crop, no other labelled box more than 15 % inside, and the labelled box at least 40 % of the
crop. Crops that merge or split labelled lines have no single true text and are left out, so this
slice measures rec on what det cut when det found the line. Up to --per-page crops per page are kept
(seeded choice), never one whose text is a label in another split's lines. They go into
ocr_lines/<split> as `<split>_det_PPPP_K.jpg` and are appended to its labels.tsv and slices.tsv
(earlier det crops are replaced).

Usage: python tools/ocr_det_crops.py [--data calibration_data] [--splits tune eval] [--per-page 3] [--seed 0]
Needs onnxruntime, rapidocr-onnxruntime and opencv (see ocr_fp32.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ocr_fp32 import crop_boxes, detect, detector, quad_area, quad_intersection, read_tsv, to_bgr

SPLIT_IDS = {"tune": 2, "eval": 1}


def label_for(box: np.ndarray, truth: list[tuple[str, np.ndarray]]) -> str | None:
    """The one labelled line this det box holds, or None when it holds none or several."""
    area = quad_area(box)
    covers = [(quad_intersection(box, q) / max(quad_area(q), 1.0), text, q) for text, q in truth]
    inside = [c for c in covers if c[0] > 0.15]
    if len(inside) != 1 or inside[0][0] < 0.8:
        return None
    _, text, q = inside[0]
    return text if quad_area(q) >= 0.4 * area else None


def other_texts(lines: Path, split: str) -> set[str]:
    texts: set[str] = set()
    for folder in lines.iterdir():
        if folder.name != split and (folder / "labels.tsv").is_file():
            texts.update(read_tsv(folder / "labels.tsv").values())
    return texts


def rewrite_without_crops(folder: Path) -> None:
    for name in ("labels.tsv", "slices.tsv"):
        rows = (folder / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (folder / name).write_text("".join(r for r in rows if "_det_" not in r.split("\t")[0]), encoding="utf-8")
    for old in folder.glob("*_det_*"):
        old.unlink()


def cut_split(data: Path, split: str, per_page: int, seed: int) -> int:
    pages, lines = data / "ocr_pages" / split, data / "ocr_lines" / split
    rewrite_without_crops(lines)
    avoid = other_texts(data / "ocr_lines", split)
    det = detector()
    labels, slices = [], []
    for index, (page_name, raw) in enumerate(read_tsv(pages / "labels.tsv").items()):
        truth = [(item["transcription"], np.array(item["points"], np.float32)) for item in json.loads(raw)]
        bgr = to_bgr(Image.open(pages / page_name))
        boxes = detect(det, bgr)
        candidates = []
        for box, crop in zip(boxes, crop_boxes(bgr, boxes), strict=True):
            text = label_for(box, truth)
            # RapidOCR turns tall crops by 90 degrees; those are not horizontal lines.
            if text and text not in avoid and crop.shape[1] > crop.shape[0] * 1.5:
                candidates.append((text, crop))
        rng = np.random.default_rng([seed, 5, SPLIT_IDS[split], index])
        for k, pick in enumerate(sorted(rng.permutation(len(candidates))[:per_page])):
            text, crop = candidates[int(pick)]
            name = f"{split}_det_{index:04d}_{k}.jpg"
            Image.fromarray(np.ascontiguousarray(crop[:, :, ::-1])).save(lines / name, format="JPEG", quality=90, subsampling=0)
            labels.append(f"{name}\t{text}\n")
            slices.append(f"{name}\tdet_crop\n")
    with open(lines / "labels.tsv", "a", encoding="utf-8") as f:
        f.write("".join(labels))
    with open(lines / "slices.tsv", "a", encoding="utf-8") as f:
        f.write("".join(slices))
    return len(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("calibration_data"))
    ap.add_argument("--splits", nargs="+", default=["tune", "eval"])
    ap.add_argument("--per-page", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for split in args.splits:
        print(f"{split}: {cut_split(args.data, split, args.per_page, args.seed)} det crops")


if __name__ == "__main__":
    main()
