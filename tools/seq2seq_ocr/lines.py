"""Text lines for the seq2seq OCR model: texts, rendering, preprocessing, vocabulary.

No torch here: the held-out set writer and the onnxruntime evaluation use this module too.
Rendering is tools/make_ocr_data.py's own (fonts, backgrounds, blur, noise, JPEG), restricted
to its Latin/alphanumeric lines plus 10 % random character strings, so the model must read
glyphs and cannot lean on the templates alone.
"""

from __future__ import annotations

import math
import string
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import make_ocr_data as gen
from check_ocr_data import edit_distance

# Printable ASCII: letters, digits, punctuation and space (95 characters).
CHARSET = string.digits + string.ascii_letters + string.punctuation + " "
SPECIALS = ("<pad>", "<s>", "</s>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
VOCAB: tuple[str, ...] = SPECIALS + tuple(CHARSET)
CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB) if i >= len(SPECIALS)}

HEIGHT = 32  # model input height
MAX_WIDTH = 384  # widest input after scaling to HEIGHT; wider lines are not drawn
MAX_CHARS = 40  # longest label (fits the decoder's 50 positions with <s> and </s>)
WIDTH_MULTIPLE = 8  # the encoder downsamples width by 8

RANDOM_POOL = string.digits + string.ascii_letters + "-.,:/#()$%@+&*!?"


def random_text(rng: np.random.Generator) -> str:
    """A random string of characters, sometimes split in words."""
    n = int(rng.integers(3, 21))
    chars = [gen.pick(rng, RANDOM_POOL) for _ in range(n)]
    for i in range(1, n - 1):
        if rng.random() < 0.15:
            chars[i] = " "
    return "".join(chars).strip() or "0"


def line_text(rng: np.random.Generator) -> str:
    if rng.random() < 0.1:
        return random_text(rng)
    text = gen.en_line(rng)
    if rng.random() < 0.2:  # some longer lines, as make_ocr_data does
        text = f"{text} {gen.en_line(rng)}"
    return text


def scaled_width(img: Image.Image) -> int:
    return max(1, math.ceil(HEIGHT * img.width / img.height))


def fits(text: str, img: Image.Image) -> bool:
    return len(text) <= MAX_CHARS and all(c in CHAR_TO_ID for c in text) and scaled_width(img) <= MAX_WIDTH


def make_sample(rng: np.random.Generator, exclude: frozenset[str] = frozenset()) -> tuple[str, Image.Image]:
    """One (text, image) the model can take, drawn until it fits; texts in `exclude` are skipped."""
    for _ in range(200):
        text = line_text(rng)
        if text in exclude:
            continue
        img = gen.render_line(rng, text)
        if img is not None and fits(text, img):
            return text, img
    raise RuntimeError("could not draw a fitting line")


def to_pixels(img: Image.Image) -> np.ndarray:
    """CHW float32 in [-1, 1], height HEIGHT, width as the image's ratio gives (unpadded).

    The same as quant's recipe input {resize: {mode: height, height: 32, multiple_of: 8},
    scale: 1/255, mean: 0.5, std: 0.5, color: RGB, layout: NCHW, pad_value: 0}: bilinear resize.
    """
    rgb = img.convert("RGB").resize((scaled_width(img), HEIGHT), Image.Resampling.BILINEAR)
    pixels = np.asarray(rgb, dtype=np.float32) * np.float32(1 / 255)
    return ((pixels - 0.5) / 0.5).transpose(2, 0, 1)


def pad_batch(pixels: list[np.ndarray]) -> np.ndarray:
    """Right-pad to the widest (rounded up to WIDTH_MULTIPLE) with 0, quant's default pad_value."""
    width = max(p.shape[2] for p in pixels)
    width = math.ceil(width / WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    out = np.zeros((len(pixels), 3, HEIGHT, width), dtype=np.float32)
    for i, p in enumerate(pixels):
        out[i, :, :, : p.shape[2]] = p
    return out


def encode(text: str) -> list[int]:
    return [BOS_ID] + [CHAR_TO_ID[c] for c in text] + [EOS_ID]


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids if i >= len(SPECIALS))


def read_split(folder: Path) -> list[tuple[str, str]]:
    """(file name, label) rows of a labels.tsv."""
    rows = []
    for line in (folder / "labels.tsv").read_text(encoding="utf-8").splitlines():
        name, _, text = line.partition("\t")
        rows.append((name, text))
    return rows


def cer(predictions: list[str], labels: list[str]) -> float:
    """Character error rate: total edit distance over total label length."""
    errors = sum(edit_distance(p, t) for p, t in zip(predictions, labels, strict=True))
    return errors / max(1, sum(len(t) for t in labels))
