#!/usr/bin/env python3
"""Write the held-out line sets of the seq2seq OCR model (no torch needed).

calibration_data/seq2seq_lines/{calib,tune,eval}/ with labels.tsv (filename<TAB>text), 16-colour
PNGs as tools/make_ocr_data.py writes them. Texts are unique across the three splits, and the
training stream (train.py) skips every text written here.

Usage: python tools/seq2seq_ocr/make_heldout.py --seed 0 --out calibration_data/seq2seq_lines
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import lines
import numpy as np

SPLITS = {"calib": 64, "tune": 64, "eval": 200}
SPLIT_IDS = {"calib": 0, "tune": 1, "eval": 2}
HELDOUT_STREAM = 3  # the training stream is 2: the generators never share a seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("calibration_data/seq2seq_lines"))
    args = ap.parse_args()
    lines.gen.check_fonts()
    shutil.rmtree(args.out, ignore_errors=True)
    seen: set[str] = set()
    for split, count in SPLITS.items():
        folder = args.out / split
        folder.mkdir(parents=True)
        rows = []
        for i in range(count):
            rng = np.random.default_rng([args.seed, HELDOUT_STREAM, SPLIT_IDS[split], i])
            text, img = lines.make_sample(rng, frozenset(seen))
            seen.add(text)
            name = f"{split}_{i:04d}.png"
            (folder / name).write_bytes(lines.gen.encode_line(img))
            rows.append(f"{name}\t{text}\n")
        (folder / "labels.tsv").write_text("".join(rows), encoding="utf-8")
    print(f"wrote {SPLITS} lines to {args.out}")


if __name__ == "__main__":
    main()
