"""Image -> model input tensor, as the recipe declares: resize, scale, mean/std, colour order, layout."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from quant.recipe.schema import ImageInput, ResizeFixed, ResizeLimitSide, ResizeShortSide, ResizeToHeight


def _resize(image: Image.Image, width: int, height: int) -> np.ndarray:
    """HWC float pixels (one channel for a grey image)."""
    pixels = np.asarray(image.resize((max(1, width), max(1, height)), Image.Resampling.BILINEAR), dtype=np.float32)
    return pixels[:, :, np.newaxis] if pixels.ndim == 2 else pixels


def _short_side_then_crop(image: Image.Image, spec: ResizeShortSide) -> np.ndarray:
    """The classification standard: the shorter side to `size`, ratio kept, then the centred square `crop`."""
    width, height = image.size
    ratio = spec.size / min(width, height)
    new_w, new_h = max(spec.size, round(width * ratio)), max(spec.size, round(height * ratio))
    pixels = _resize(image, new_w, new_h)
    if spec.crop is None:
        return pixels
    top, left = (new_h - spec.crop) // 2, (new_w - spec.crop) // 2
    return pixels[top : top + spec.crop, left : left + spec.crop]


def _place(pixels: np.ndarray, height: int, width: int, pad_value: float, center: bool) -> np.ndarray:
    """Put normalised HWC pixels on a canvas of pad_value (right/bottom or centred)."""
    canvas = np.full((height, width, pixels.shape[2]), pad_value, dtype=np.float32)
    top = (height - pixels.shape[0]) // 2 if center else 0
    left = (width - pixels.shape[1]) // 2 if center else 0
    canvas[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
    return canvas


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def _limit_side_size(width: int, height: int, spec: ResizeLimitSide) -> tuple[int, int]:
    # PaddleOCR's det resize: scale only when the limit is violated, then snap to the multiple.
    if spec.limit_type == "max":
        ratio = spec.limit / max(height, width) if max(height, width) > spec.limit else 1.0
    else:
        ratio = spec.limit / min(height, width) if min(height, width) < spec.limit else 1.0
    return _round_to(width * ratio, spec.multiple_of), _round_to(height * ratio, spec.multiple_of)


def image_to_tensor(image: Image.Image, spec: ImageInput) -> np.ndarray:
    """One image as a batch of one: float32, in the layout and colour order the model expects."""
    image = image.convert("L" if spec.color == "GRAY" else "RGB")
    width, height = image.size
    resize = spec.resize

    def normalise(pixels: np.ndarray) -> np.ndarray:
        if spec.color == "BGR":
            pixels = pixels[:, :, ::-1]
        channels = pixels.shape[2]  # 1 for GRAY, whose mean and std are one number given three times
        scaled = pixels * np.float32(spec.scale)
        return (scaled - np.asarray(spec.mean[:channels], np.float32)) / np.asarray(spec.std[:channels], np.float32)

    if isinstance(resize, ResizeFixed):
        if resize.keep_ratio:
            ratio = min(resize.height / height, resize.width / width)
            new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
            tensor = _place(normalise(_resize(image, new_w, new_h)), resize.height, resize.width, spec.pad_value, resize.pad == "center")
        else:
            tensor = normalise(_resize(image, resize.width, resize.height))
    elif isinstance(resize, ResizeToHeight):
        new_w = min(resize.max_width, max(1, math.ceil(resize.height * width / height)))
        padded_w = max(resize.min_width, new_w)
        padded_w = math.ceil(padded_w / resize.multiple_of) * resize.multiple_of
        tensor = _place(normalise(_resize(image, new_w, resize.height)), resize.height, padded_w, spec.pad_value, center=False)
    elif isinstance(resize, ResizeShortSide):
        tensor = normalise(_short_side_then_crop(image, resize))
    else:
        new_w, new_h = _limit_side_size(width, height, resize)
        tensor = normalise(_resize(image, new_w, new_h))
    if spec.layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor[np.newaxis], dtype=np.float32)
