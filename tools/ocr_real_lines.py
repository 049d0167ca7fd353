"""Realistic text-line crops for the rec model's `tune` and `eval` splits (one slice per sample).

Each line is drawn in one of many fonts (sans, serif, mono, Kai, Ming; regular, bold, italic) at a
text height of about 16 to 52 px, then given its slice's degradation (see `LINE_SLICES` and
calibration_data/README.md). Writes `<split>_NNNN.{png,jpg}`, `labels.tsv` (`file<TAB>text`) and
`slices.tsv` (`file<TAB>slice`). Used by make_ocr_data.py; only Pillow and numpy.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import ocr_degrade as deg
from make_ocr_data import (
    DEJAVU,
    WQY,
    FontSpec,
    Rng,
    alnum_code,
    background,
    compose,
    dark_color,
    date_en,
    date_zh,
    digits,
    en_line,
    has_glyph,
    load_font,
    mixed_line,
    phone,
    pick,
    price,
    zh_line,
)

# --------------------------------------------------------------------------- fonts

REAL_FONT_PACKAGES = (
    "fonts-dejavu-core fonts-dejavu-extra fonts-wqy-microhei fonts-wqy-zenhei fonts-noto-cjk "
    "fonts-liberation2 fonts-freefont-ttf fonts-arphic-uming fonts-arphic-ukai"
)
NOTO = Path("/usr/share/fonts/opentype/noto")
LIB = Path("/usr/share/fonts/truetype/liberation2")
FREE = Path("/usr/share/fonts/truetype/freefont")
ARPHIC = Path("/usr/share/fonts/truetype/arphic")

REAL_LATIN_FONTS: tuple[FontSpec, ...] = tuple(
    FontSpec(p, 0)
    for p in (
        DEJAVU / "DejaVuSans.ttf",
        DEJAVU / "DejaVuSans-Bold.ttf",
        DEJAVU / "DejaVuSerif.ttf",
        DEJAVU / "DejaVuSansMono.ttf",
        DEJAVU / "DejaVuSansCondensed.ttf",
        DEJAVU / "DejaVuSerif-Italic.ttf",
        LIB / "LiberationSans-Regular.ttf",
        LIB / "LiberationSans-Bold.ttf",
        LIB / "LiberationSerif-Regular.ttf",
        LIB / "LiberationSerif-Bold.ttf",
        LIB / "LiberationMono-Regular.ttf",
        LIB / "LiberationSans-Italic.ttf",
        FREE / "FreeSans.ttf",
        FREE / "FreeSerif.ttf",
        FREE / "FreeMono.ttf",
        FREE / "FreeSansBold.ttf",
    )
)
# Index 2 in the Noto collections is Simplified Chinese; index 0 in the Arphic ones is "CN".
REAL_CJK_FONTS: tuple[FontSpec, ...] = (
    FontSpec(WQY / "wqy-microhei.ttc", 0),
    FontSpec(WQY / "wqy-zenhei.ttc", 0),
    FontSpec(NOTO / "NotoSansCJK-Regular.ttc", 2),
    FontSpec(NOTO / "NotoSansCJK-Bold.ttc", 2),
    FontSpec(NOTO / "NotoSerifCJK-Regular.ttc", 2),
    FontSpec(NOTO / "NotoSerifCJK-Bold.ttc", 2),
    FontSpec(ARPHIC / "uming.ttc", 0),
    FontSpec(ARPHIC / "ukai.ttc", 0),
)
FALLBACK_FONT = FontSpec(NOTO / "NotoSansCJK-Regular.ttc", 2)  # has every character we draw


def check_real_fonts() -> None:
    missing = sorted({str(f.path) for f in REAL_LATIN_FONTS + REAL_CJK_FONTS if not f.path.is_file()})
    if missing:
        sys.exit(
            "make_ocr_data: missing font files:\n  " + "\n  ".join(missing) + f"\nInstall them with: apt-get install -y {REAL_FONT_PACKAGES}"
        )


def real_font(rng: Rng, text: str) -> FontSpec:
    """A font for the text: CJK fonts for Chinese, and for a quarter of Latin lines (as in Chinese documents)."""
    cjk = any(ord(c) > 0x2000 for c in text)
    spec = pick(rng, REAL_CJK_FONTS) if cjk or rng.random() < 0.25 else pick(rng, REAL_LATIN_FONTS)
    return spec if all(has_glyph(spec, c) for c in text) else FALLBACK_FONT


# --------------------------------------------------------------------------- text


def numeric_line(rng: Rng) -> str:
    """Digits and punctuation: amounts, times, codes, phone and serial numbers, sums."""
    kind = int(rng.integers(10))
    if kind == 0:
        return f"{date_en(rng)} {int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}:{int(rng.integers(0, 60)):02d}"
    if kind == 1:
        q, p = int(rng.integers(1, 20)), float(np.exp(rng.uniform(0, 6)))
        return f"{q} x {p:.2f} = {q * p:.2f}"
    if kind == 2:
        return f"{pick(rng, ['￥', '¥', '$', 'USD ', 'RMB '])}{price(rng)}"
    if kind == 3:
        return f"+86 {int(rng.integers(130, 190))} {digits(rng, 4)} {digits(rng, 4)}"
    if kind == 4:
        return f"SN: {alnum_code(rng)}-{digits(rng, 4)}/{int(rng.integers(1, 99)):02d}"
    if kind == 5:
        return f"{rng.uniform(0, 100):.1f}% ({int(rng.integers(1, 999))}/{int(rng.integers(1000, 9999))})"
    if kind == 6:
        return f"{int(rng.integers(6, 11)):02d}:{pick(rng, ['00', '30'])}-{int(rng.integers(17, 23))}:{pick(rng, ['00', '30'])}"
    if kind == 7:
        return f"No.{digits(rng, int(rng.integers(6, 13)))}"
    if kind == 8:
        return f"{date_zh(rng)} {phone(rng)}"
    return f"[{digits(rng, 3)}] {rng.uniform(0, 50):.2f}kg #{digits(rng, 5)}"


# Realistic mix by index (cycle of 20): 35% Chinese, 25% Latin, 25% mixed, 15% digits/punctuation.
ZH, EN, MIX, NUM = (zh_line, "，"), (en_line, " "), (mixed_line, " "), (numeric_line, " ")
TEXT_KINDS: tuple[tuple[Callable[[Rng], str], str], ...] = (
    ZH, EN, MIX, ZH, NUM, EN, ZH, MIX, EN, ZH, NUM, MIX, ZH, EN, ZH, MIX, EN, NUM, ZH, MIX,
)


def line_text(rng: Rng, kind: int, phrases: int) -> str:
    make, joiner = TEXT_KINDS[kind % len(TEXT_KINDS)]
    parts = [make(rng) for _ in range(phrases)]
    return joiner.join(p.rstrip("。") if i < len(parts) - 1 else p for i, p in enumerate(parts))


# --------------------------------------------------------------------------- rendering

# The degradations a sample can have alone or, in `mixed`, two or three together.
MIXABLE = ("gaussian_blur", "motion_blur", "noise", "jpeg", "low_contrast", "uneven_light", "rotation", "perspective", "texture")
# One primary slice per sample; `mixed` combines two or three of the degradations at 70 % strength.
LINE_SLICES = ("clean", *MIXABLE, "long_line", "loose_crop", "tight_crop", "mixed")
MAX_ASPECT = 25.0  # the recipes resize to height 48 and cap the width at 1280 (26.7:1)


def _draw(mask: Image.Image, xy: tuple[float, float], text: str, spec: FontSpec, size: int) -> None:
    ImageDraw.Draw(mask).text(xy, text, fill=255, font=load_font(spec, size))


def _ink_box(mask: Image.Image) -> tuple[int, int, int, int] | None:
    return mask.point(lambda v: 255 if v > 60 else 0).getbbox()


def render_real_line(rng: Rng, text: str, slc: str, neighbours: Callable[[], str]) -> Image.Image | None:
    """The line as its slice wants it, before encoding; None when the shape does not fit a crop."""
    effects = list(rng.choice(MIXABLE, size=int(rng.integers(2, 4)), replace=False)) if slc == "mixed" else [slc]
    strength = 0.7 if slc == "mixed" else 1.0
    spec = real_font(rng, text)
    # Log-uniform text size: small, low-resolution text (upscaled by rec) is common in photos.
    size = round(math.exp(rng.uniform(math.log(11), math.log(28 if slc == "long_line" else 44))))
    font = load_font(spec, size)
    text_w = math.ceil(font.getlength(text))
    margin = 2 * size
    lead = int(size * rng.uniform(1.15, 1.5))
    canvas = (text_w + 2 * margin, 3 * size + 2 * margin)
    mask = Image.new("L", canvas, 0)
    y0 = margin + size
    _draw(mask, (margin, y0), text, spec, size)
    main_box = _ink_box(mask)
    if main_box is None:
        return None
    if slc == "loose_crop" and rng.random() < 0.8:  # parts of the lines above and below get in
        for dy in (-lead, lead):
            other = neighbours()
            _draw(mask, (margin + rng.uniform(-2, 2) * size, y0 + dy), other, real_font(rng, other), size)
    layers = [mask]
    # Geometric effects move the whole ink layer; the crop box is the moved main line's box.
    corners = np.array([[main_box[0], main_box[1]], [main_box[2], main_box[1]], [main_box[2], main_box[3]], [main_box[0], main_box[3]]], float)
    if "rotation" in effects:
        w = main_box[2] - main_box[0]
        max_deg = min(6.0, math.degrees(math.atan(rng.uniform(0.6, 1.5) * size / max(w, 1))))
        layers, move, _ = deg.rotate_layers(layers, rng, max(1.0, max_deg * strength), min_deg=min(1.0, max_deg * strength))
        corners = np.array([move(x, y) for x, y in corners])
    if "perspective" in effects:
        w, h = layers[0].size
        layers, move = deg.warp_layers(layers, deg.keystone_corners(rng, w, h, 0.4 * strength))
        corners = np.array([move(x, y) for x, y in corners])
    mask = layers[0]
    x0, y0b = corners.min(axis=0)
    x1, y1 = corners.max(axis=0)
    ink_h = y1 - y0b
    if slc == "tight_crop":  # a detector box that shaves the ascenders / descenders a little
        pad_t, pad_b = -rng.uniform(0, 0.08) * ink_h, -rng.uniform(0, 0.08) * ink_h
        pad_l, pad_r = rng.uniform(0, 2), rng.uniform(0, 2)
    elif slc == "loose_crop":
        pad_t, pad_b = rng.uniform(0.3, 0.6) * size, rng.uniform(0.3, 0.6) * size
        pad_l, pad_r = rng.uniform(0.5, 2.0) * size, rng.uniform(0.5, 2.0) * size
    else:
        pad_t, pad_b = rng.uniform(0.08, 0.35) * size, rng.uniform(0.08, 0.35) * size
        pad_l, pad_r = rng.uniform(0.15, 0.8) * size, rng.uniform(0.15, 0.8) * size
    box = (round(x0 - pad_l), round(y0b - pad_t), round(x1 + pad_r), round(y1 + pad_b))
    crop = mask.crop(box)
    w, h = crop.size
    if h < 10 or not 2.0 <= w / h <= MAX_ASPECT or (slc == "long_line" and w / h < 14):
        return None
    scale = size / 32
    bg = deg.textured_paper(rng, h, w, scale) if "texture" in effects else background(rng, h, w)
    # Clean lines get no sensor noise at all (they stay lossless PNG); the others a trace of it.
    img = Image.fromarray(compose(bg, crop, dark_color(rng), rng, noise_max=0.0 if slc == "clean" else 2.0), "RGB")
    for name in effects:
        if slc == "jpeg":  # the low-quality encoding in encode_real is the artefact itself
            img = deg.low_resolution(img, rng)
        elif name in deg.PHOTOMETRIC:
            img = deg.PHOTOMETRIC[name](img, rng, scale, strength)
    return img.convert("L") if rng.random() < 0.3 else img


def encode_real(img: Image.Image, slc: str, rng: Rng) -> tuple[bytes, str]:
    """Clean lines stay PNG; the `jpeg` slice is stored at its own low quality (the encoding *is* the
    degradation); every other slice as a good camera JPEG (quality 90, no chroma subsampling)."""
    buf = io.BytesIO()
    if slc == "clean":
        img.save(buf, format="PNG", optimize=True)
        return buf.getvalue(), "png"
    quality = deg.jpeg_quality(rng) if slc == "jpeg" else 90
    img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality > 80 else 2)
    return buf.getvalue(), "jpg"


def write_real_lines(out: Path, split: str, split_id: int, per_slice: int, seed: int, seen: set[str]) -> None:
    """`per_slice` lines of every slice, in slice order cycled by index; texts never repeat across splits."""
    folder = out / "ocr_lines" / split
    folder.mkdir(parents=True, exist_ok=True)
    labels, slices = [], []
    for i in range(per_slice * len(LINE_SLICES)):
        slc = LINE_SLICES[i % len(LINE_SLICES)]
        rng = np.random.default_rng([seed, 3, split_id, i])
        kind = i // len(LINE_SLICES)
        for _ in range(300):
            phrases = int(rng.integers(3, 6)) if slc == "long_line" else (2 if rng.random() < 0.25 else 1)
            text = line_text(rng, kind, phrases)
            if text in seen:
                continue
            img = render_real_line(rng, text, slc, lambda r=rng, k=kind: line_text(r, k + 1, 2))
            if img is not None:
                break
        else:
            raise RuntimeError(f"could not generate a fitting {slc} line")
        seen.add(text)
        data, ext = encode_real(img, slc, rng)
        name = f"{split}_{i:04d}.{ext}"
        (folder / name).write_bytes(data)
        labels.append(f"{name}\t{text}\n")
        slices.append(f"{name}\t{slc}\n")
    write_tables(folder, labels, slices)


def write_tables(folder: Path, labels: list[str], slices: list[str]) -> None:
    (folder / "labels.tsv").write_text("".join(labels), encoding="utf-8")
    (folder / "slices.tsv").write_text("".join(slices), encoding="utf-8")
