#!/usr/bin/env python3
"""FP32 PP-OCRv4's own accuracy against the labels, per slice (the table in calibration_data/README.md).

rec (ocr_lines/<split>): per slice, lines, CER (raw text), CER of the normalised text (NFKC, spaces
removed: what the recipes' *_norm metrics compare) and the share of lines read exactly (normalised).
det (ocr_pages/<split>): per slice, pages, labelled boxes, and RapidOCR's det boxes matched one-to-one
to labelled boxes at IoU >= 0.5: recall, precision, F1.

Usage: python tools/ocr_fp32_table.py [--data calibration_data] [--splits tune eval] [--no-det]
Needs onnxruntime, rapidocr-onnxruntime, opencv and PyYAML (all in the project's venv).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from ocr_fp32 import Recognizer, detect, detector, edit_distance, match_boxes, normalise, read_tsv, to_bgr


def slices_of(folder: Path, names: list[str]) -> dict[str, str]:
    path = folder / "slices.tsv"
    return read_tsv(path) if path.is_file() else dict.fromkeys(names, "all")


def rec_table(folder: Path, rec: Recognizer) -> None:
    labels = read_tsv(folder / "labels.tsv")
    slices = slices_of(folder, list(labels))
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])  # lines, err, chars, err_n, chars_n, exact_n
    for name, label in labels.items():
        missing = set(label) - rec.known
        assert not missing, f"{folder / name}: label characters not in the rec dictionary: {missing}"
        pred = rec.read(Image.open(folder / name))
        for key in (slices[name], "ALL"):
            s = stats[key]
            s[0] += 1
            s[1] += edit_distance(pred, label)
            s[2] += len(label)
            d = edit_distance(normalise(pred), normalise(label))
            s[3] += d
            s[4] += len(normalise(label))
            s[5] += d == 0
    print(f"\nrec {folder} (FP32 vs labels)")
    print("| slice | lines | CER | CER norm | exact norm |")
    print("|---|---:|---:|---:|---:|")
    for key in sorted(stats, key=lambda k: (k == "ALL", k)):
        n, e, c, en, cn, ex = stats[key]
        print(f"| {key} | {n} | {e / c:.2%} | {en / cn:.2%} | {ex / n:.1%} |")


def det_table(folder: Path) -> None:
    labels = read_tsv(folder / "labels.tsv")
    slices = slices_of(folder, list(labels))
    det = detector()
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # pages, truth, found, matched
    for name, raw in labels.items():
        truth = [np.array(item["points"], np.float32) for item in json.loads(raw)]
        found = detect(det, to_bgr(Image.open(folder / name)))
        matched = len(match_boxes(found, truth))
        for key in (slices[name], "ALL"):
            s = stats[key]
            s[0] += 1
            s[1] += len(truth)
            s[2] += len(found)
            s[3] += matched
    print(f"\ndet {folder} (FP32 boxes vs labelled boxes, IoU >= 0.5)")
    print("| slice | pages | boxes | recall | precision | F1 |")
    print("|---|---:|---:|---:|---:|---:|")
    for key in sorted(stats, key=lambda k: (k == "ALL", k)):
        n, t, f, m = stats[key]
        r, p = m / max(t, 1), m / max(f, 1)
        print(f"| {key} | {n} | {t} | {r:.1%} | {p:.1%} | {2 * r * p / max(r + p, 1e-9):.1%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("calibration_data"))
    ap.add_argument("--splits", nargs="+", default=["tune", "eval"])
    ap.add_argument("--no-det", action="store_true")
    args = ap.parse_args()
    rec = Recognizer()
    for split in args.splits:
        rec_table(args.data / "ocr_lines" / split, rec)
        if not args.no_det:
            det_table(args.data / "ocr_pages" / split)


if __name__ == "__main__":
    main()
