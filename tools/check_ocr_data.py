#!/usr/bin/env python3
"""Sanity-check calibration_data with the FP32 PP-OCRv4 models (not part of CI).

* rec: character error rate of the eval text lines (PaddleOCR preprocessing,
  CTC greedy decoding) and that every label character is in the dictionary.
* det: how much of the labelled text the probability map (> 0.3) covers, and
  how much of the map falls outside the labelled boxes.

Usage: python tools/check_ocr_data.py [--data calibration_data] [--models DIR]
Needs onnxruntime and the models of the rapidocr-onnxruntime package.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

REC = "ch_PP-OCRv4_rec_infer.onnx"
DET = "ch_PP-OCRv4_det_infer.onnx"


def default_models() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models"


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # shared 2-core machine
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def to_chw(img: Image.Image) -> np.ndarray:
    """RGB image -> normalised BGR float32 CHW, as PaddleOCR feeds its models."""
    bgr = np.asarray(img.convert("RGB"), dtype=np.float32)[:, :, ::-1]
    return ((bgr / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def rec_input(img: Image.Image) -> np.ndarray:
    """Resize to height 48 keeping the ratio; zero-pad to max(320, that) wide."""
    w = max(1, math.ceil(48 * img.width / img.height))
    pad_w = max(320, w)
    x = np.zeros((1, 3, 48, pad_w), dtype=np.float32)
    x[0, :, :, :w] = to_chw(img.convert("RGB").resize((w, 48), Image.Resampling.BILINEAR))
    return x


def ctc_decode(probs: np.ndarray, chars: list[str]) -> str:
    ids = probs.argmax(axis=-1)
    keep = np.r_[True, ids[1:] != ids[:-1]] & (ids != 0)
    return "".join(chars[i] for i in ids[keep])


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def read_tsv(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name, text = line.split("\t", 1)
        rows.append((name, text))
    return rows


def check_rec(models: Path, folder: Path, show: int) -> None:
    sess = session(models / REC)
    dictionary = sess.get_modelmeta().custom_metadata_map["character"].splitlines()
    chars = ["blank", *dictionary, " "]
    known = set(chars[1:])
    rows = read_tsv(folder / "labels.tsv")
    errors = total = errors_strip = errors_nospace = total_nospace = exact = 0
    bad: list[tuple[str, str, str]] = []
    for name, label in rows:
        missing = set(label) - known
        assert not missing, f"{name}: characters not in dictionary: {missing}"
        x = rec_input(Image.open(folder / name))
        pred = ctc_decode(sess.run(None, {sess.get_inputs()[0].name: x})[0][0], chars)
        d = edit_distance(pred, label)
        errors, total = errors + d, total + len(label)
        errors_strip += edit_distance(pred.strip(), label)
        errors_nospace += edit_distance(pred.replace(" ", ""), label.replace(" ", ""))
        total_nospace += len(label.replace(" ", ""))
        exact += d == 0
        if d:
            bad.append((name, label, pred))
    print(
        f"rec {folder}: {len(rows)} lines, CER {errors / total:.2%} "
        f"(leading/trailing spaces stripped {errors_strip / total:.2%}, "
        f"all spaces ignored {errors_nospace / total_nospace:.2%}), exact lines {exact / len(rows):.1%}"
    )
    for name, label, pred in bad[:show]:
        print(f"  {name}: {label!r} -> {pred!r}")


def det_input(img: Image.Image) -> tuple[np.ndarray, float, float]:
    """Longer side <= 960, both sides multiples of 32."""
    scale = min(1.0, 960 / max(img.size))
    w = max(32, round(img.width * scale / 32) * 32)
    h = max(32, round(img.height * scale / 32) * 32)
    return to_chw(img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR))[None], w / img.width, h / img.height


def check_det(models: Path, folder: Path, limit: int, save: Path | None) -> None:
    sess = session(models / DET)
    for name, labels in read_tsv(folder / "labels.tsv")[:limit]:
        img = Image.open(folder / name)
        x, sx, sy = det_input(img)
        prob = sess.run(None, {sess.get_inputs()[0].name: x})[0][0, 0]
        on = prob > 0.3
        boxes = Image.new("L", (prob.shape[1], prob.shape[0]), 0)
        draw = ImageDraw.Draw(boxes)
        items = json.loads(labels)
        hits = 0
        for it in items:
            poly = [(px * sx, py * sy) for px, py in it["points"]]
            draw.polygon(poly, fill=255)
            one = Image.new("L", boxes.size, 0)
            ImageDraw.Draw(one).polygon(poly, fill=255)
            inside = np.asarray(one) > 0
            hits += int(inside.any() and on[inside].mean() > 0.2)
        in_box = np.asarray(boxes) > 0
        outside = on[~in_box].sum() / max(1, on.sum())
        print(
            f"det {name}: {img.size} -> {x.shape[3]}x{x.shape[2]}, boxes hit {hits}/{len(items)}, "
            f"box pixels on {on[in_box].mean():.1%}, map pixels outside boxes {outside:.1%}"
        )
        if save:
            save.mkdir(parents=True, exist_ok=True)
            vis = img.convert("RGB").resize(boxes.size)
            overlay = Image.fromarray((on * 128).astype(np.uint8))  # half-transparent red
            red = Image.new("RGB", vis.size, (255, 0, 0))
            Image.composite(red, vis, overlay).save(save / f"{Path(name).stem}_det.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("calibration_data"))
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--split", default="eval")
    ap.add_argument("--pages", type=int, default=4, help="how many pages to run det on")
    ap.add_argument("--show", type=int, default=10, help="how many misread lines to print")
    ap.add_argument("--save-det", type=Path, default=None, help="write probability-map overlays here")
    args = ap.parse_args()
    models = args.models or default_models()
    check_rec(models, args.data / "ocr_lines" / args.split, args.show)
    check_det(models, args.data / "ocr_pages" / args.split, args.pages, args.save_det)


if __name__ == "__main__":
    main()
