"""Realistic document pages for the det model's `tune` and `eval` splits (one slice per page).

Same layouts as the calibration pages (make_ocr_data.layout_page), drawn in the larger font pool
of ocr_real_lines, then given the page's slice (see `PAGE_SLICES`). Rotation and perspective move
the labelled boxes with the ink. Writes `<split>_NNNN.jpg`, `labels.tsv` (PaddleOCR det format)
and `slices.tsv`. Only Pillow and numpy.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

import ocr_degrade as deg
from make_ocr_data import FontSpec, Item, Rng, background, compose, layout_page, pick
from ocr_real_lines import MIXABLE, REAL_CJK_FONTS, REAL_LATIN_FONTS, write_tables

# `mixed` combines two or three of the others at 60 % strength.
PAGE_SLICES = ("clean", *MIXABLE, "mixed")
PAGE_MIXABLE = MIXABLE
# A page image of ~1000 px is a downscaled photo, which averages sensor noise: half the lines' noise.
PAGE_STRENGTH = {"noise": 0.5}


def real_page_fonts(rng: Rng) -> tuple[FontSpec, FontSpec]:
    return pick(rng, REAL_LATIN_FONTS), pick(rng, REAL_CJK_FONTS)


def render_real_page(rng: Rng, slc: str) -> tuple[Image.Image, list[Item]]:
    page, base = layout_page(rng, real_page_fonts)
    effects = list(rng.choice(PAGE_MIXABLE, size=int(rng.integers(2, 4)), replace=False)) if slc == "mixed" else [slc]
    strength = 0.6 if slc == "mixed" else 1.0
    layers = [page.mask, page.color]
    items = page.items
    boxes = [np.array(it.box, np.float64) for it in items]
    if "rotation" in effects:  # a crooked scan or photo: more than the calibration pages' 2 degrees
        layers, move, _ = deg.rotate_layers(layers, rng, max_deg=7.0 * strength, min_deg=2.0 * strength)
        boxes = [np.array([move(x, y) for x, y in b]) for b in boxes]
    if "perspective" in effects:  # photographed at an angle
        w, h = layers[0].size
        layers, move = deg.warp_layers(layers, deg.keystone_corners(rng, w, h, 0.2 * strength))
        boxes = [np.array([move(x, y) for x, y in b]) for b in boxes]
    mask, color = layers
    w, h = mask.size
    for it, b in zip(items, boxes, strict=True):
        it.box = [[min(max(round(x), 0), w - 1), min(max(round(y), 0), h - 1)] for x, y in b]
    scale = base / 24  # body text on these pages is about 16-30 px; photos of pages are softer than line crops
    bg = deg.textured_paper(rng, h, w, scale) if "texture" in effects else background(rng, h, w)
    img = Image.fromarray(compose(bg, mask, color, rng, noise_max=0.0 if slc == "clean" else 2.0), "RGB")
    for name in effects:
        if slc == "jpeg":  # stored at the low quality below: the encoding is the artefact
            img = deg.low_resolution(img, rng)
        elif name in deg.PHOTOMETRIC:
            img = deg.PHOTOMETRIC[name](img, rng, scale, strength * PAGE_STRENGTH.get(name, 1.0))
    return (img.convert("L") if rng.random() < 0.4 else img), items


def encode_real_page(img: Image.Image, slc: str, rng: Rng) -> bytes:
    """Progressive JPEG: quality 85 (like the calibration pages), the `jpeg` slice at its own low quality."""
    buf = io.BytesIO()
    quality = deg.jpeg_quality(rng) if slc == "jpeg" else 85
    img.save(buf, format="JPEG", quality=quality, optimize=True, progressive=True)
    return buf.getvalue()


def write_real_pages(out: Path, split: str, split_id: int, per_slice: int, seed: int) -> None:
    folder = out / "ocr_pages" / split
    folder.mkdir(parents=True, exist_ok=True)
    labels, slices = [], []
    for i in range(per_slice * len(PAGE_SLICES)):
        slc = PAGE_SLICES[i % len(PAGE_SLICES)]
        rng = np.random.default_rng([seed, 4, split_id, i])
        img, items = render_real_page(rng, slc)
        name = f"{split}_{i:04d}.jpg"
        (folder / name).write_bytes(encode_real_page(img, slc, rng))
        rows = [{"transcription": it.text, "points": it.box} for it in items]
        labels.append(f"{name}\t{json.dumps(rows, ensure_ascii=False)}\n")
        slices.append(f"{name}\t{slc}\n")
    write_tables(folder, labels, slices)
