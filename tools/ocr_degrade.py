"""Degradations that photographed and scanned text has, for the realistic OCR evaluation sets.

Geometric effects (rotation, perspective) act on the ink layers before the ink is laid on the
paper, and return a function that moves label points the same way. Photometric effects act on the
finished RGB image. Every strength is given at a reference text height (`scale` = 1 means text
about 32 px tall), so a small line and a large page title suffer alike.
Only Pillow and numpy; every random draw comes from the generator passed in.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

Rng = np.random.Generator
PointMap = Callable[[float, float], tuple[float, float]]


def _to_float(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float32)


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- photometric


def gaussian_blur(img: Image.Image, rng: Rng, scale: float, strength: float = 1.0) -> Image.Image:
    """Out of focus: a Gaussian point spread."""
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(1.4, 2.6) * scale * strength))


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    """A line of the given length and angle, splatted bilinearly so short lengths are smooth."""
    half = math.ceil(length / 2) + 1
    k = np.zeros((2 * half + 1, 2 * half + 1), np.float64)
    for t in np.linspace(-length / 2, length / 2, max(2, int(length * 4))):
        x, y = half + t * math.cos(angle), half + t * math.sin(angle)
        x0, y0 = math.floor(x), math.floor(y)
        fx, fy = x - x0, y - y0
        k[y0, x0] += (1 - fx) * (1 - fy)
        k[y0, x0 + 1] += fx * (1 - fy)
        k[y0 + 1, x0] += (1 - fx) * fy
        k[y0 + 1, x0 + 1] += fx * fy
    return k / k.sum()


def _convolve(arr: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D convolution of each channel with edge padding (FFT; kernels here are small)."""
    r = kernel.shape[0] // 2
    padded = np.pad(arr, ((r, r), (r, r), (0, 0)), mode="edge")
    h, w = padded.shape[:2]
    kf = np.fft.rfft2(kernel, s=(h, w))
    out = np.fft.irfft2(np.fft.rfft2(padded, axes=(0, 1)) * kf[:, :, None], s=(h, w), axes=(0, 1))
    # The kernel's centre sits at (r, r): shift back and drop the padding.
    return out[2 * r :, 2 * r :][: arr.shape[0], : arr.shape[1]]


def motion_blur(img: Image.Image, rng: Rng, scale: float, strength: float = 1.0) -> Image.Image:
    """Camera shake: a straight streak, mostly along the line (hand-held phones move sideways)."""
    length = rng.uniform(5.0, 10.0) * scale * strength
    angle = math.radians(rng.normal(0, 25) if rng.random() < 0.7 else rng.uniform(0, 180))
    return _to_image(_convolve(_to_float(img), _motion_kernel(length, angle)))


def sensor_noise(img: Image.Image, rng: Rng, scale: float, strength: float = 1.0) -> Image.Image:
    """Shot noise (brighter pixels noisier), read noise and some colour noise, slightly blotchy."""
    arr = _to_float(img)
    h, w = arr.shape[:2]
    sigma = rng.uniform(16, 32) * strength
    luma = rng.normal(0, 1, (h, w, 1)) * sigma * np.sqrt(0.35 + 0.65 * arr / 255.0)
    chroma = rng.normal(0, sigma * 0.35, (h, w, 3))
    noisy = arr + luma + chroma
    if rng.random() < 0.5:  # demosaicing makes camera noise a little coarser than one pixel
        noisy = np.asarray(_to_image(noisy).filter(ImageFilter.GaussianBlur(0.5)), np.float32)
    return _to_image(noisy)


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def jpeg_quality(rng: Rng, strength: float = 1.0) -> int:
    """Quality 15-40 at full strength (heavily compressed web images and chat photos), higher when milder."""
    return int(rng.integers(15, 41) + (1.0 - strength) * 40)


def low_resolution(img: Image.Image, rng: Rng) -> Image.Image:
    """Sometimes (40 %) a downscale and back: compressed images have often been resized too."""
    if rng.random() < 0.4:
        f = rng.uniform(0.6, 0.85)
        small = img.resize((max(8, round(img.width * f)), max(8, round(img.height * f))), Image.Resampling.BILINEAR)
        img = small.resize(img.size, Image.Resampling.BILINEAR)
    return img


def jpeg_artefacts(img: Image.Image, rng: Rng, scale: float, strength: float = 1.0) -> Image.Image:
    """Heavy compression (messaging apps, web scans), sometimes after a downscale."""
    img = low_resolution(img, rng)
    quality = jpeg_quality(rng, strength)
    return Image.open(io.BytesIO(jpeg_bytes(img, quality))).convert("RGB")


def low_contrast(img: Image.Image, rng: Rng, scale: float, strength: float = 1.0) -> Image.Image:
    """Faded print or a grey photo: the ink-to-paper difference shrinks to an eighth to a quarter."""
    arr = _to_float(img)
    keep = min(1.0, rng.uniform(0.12, 0.25) / strength)
    level = rng.uniform(120, 200)  # where the squeezed range sits (dim or bright exposure)
    return _to_image(level + (arr - arr.mean()) * keep)


def uneven_light(img: Image.Image, rng: Rng, scale: float, strength: float = 1.0) -> Image.Image:
    """A lamp's falloff, a hand's shadow with a soft edge, or glare: a smooth multiplicative field."""
    arr = _to_float(img)
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = int(rng.integers(3))
    if kind == 0:  # falloff from a bright spot
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        d = np.hypot((xx - cx) / max(w, h), (yy - cy) / max(w, h))
        field = 1.0 - strength * rng.uniform(0.6, 0.85) * np.clip(d / max(d.max(), 1e-6), 0, 1) ** 1.5
    elif kind == 1:  # a shadow edge crossing the text
        angle = rng.uniform(0, math.pi)
        proj = (xx - w / 2) * math.cos(angle) + (yy - h / 2) * math.sin(angle)
        edge = rng.uniform(-0.3, 0.3) * max(w, h)
        soft = rng.uniform(0.03, 0.15) * max(w, h)
        field = 1.0 - strength * rng.uniform(0.6, 0.8) / (1.0 + np.exp(-(proj - edge) / soft))
    else:  # glare: a bright, washed-out patch
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.2, 0.5) * max(w, h)
        glare = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        out = arr * (1 - 0.25 * glare[:, :, None]) + 255 * strength * rng.uniform(0.55, 0.75) * glare[:, :, None]
        return _to_image(out * rng.uniform(0.8, 1.0))
    return _to_image(arr * field[:, :, None])


PHOTOMETRIC: dict[str, Callable[[Image.Image, Rng, float, float], Image.Image]] = {
    "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur,
    "noise": sensor_noise,
    "jpeg": jpeg_artefacts,
    "low_contrast": low_contrast,
    "uneven_light": uneven_light,
}


# --------------------------------------------------------------------------- background texture


def textured_paper(rng: Rng, h: int, w: int, scale: float) -> np.ndarray:
    """Paper that is not plain: mottled recycled paper, security-print waves, ruled or squared lines.

    Returns float HxWx3 in 0..255 (the caller lays ink over it)."""
    base = rng.uniform(200, 250, 3) if rng.random() < 0.6 else np.full(3, rng.uniform(205, 250))
    bg = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Mottling at two scales, always.
    for cell, amp in ((rng.uniform(3, 6) * scale, rng.uniform(6, 14)), (rng.uniform(15, 40) * scale, rng.uniform(8, 18))):
        coarse = rng.normal(0, amp, (max(2, int(h / cell)), max(2, int(w / cell))))
        tex = np.asarray(Image.fromarray(coarse.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BICUBIC))
        bg += tex[:, :, None]
    kind = int(rng.integers(3))
    tint = rng.uniform(-100, -45, 3) * rng.uniform(0.5, 1.0, 3)
    if kind == 0:  # guilloche-like waves, as on invoices and tickets
        period = rng.uniform(5, 12) * scale
        phase = np.sin(xx / (rng.uniform(20, 60) * scale)) * rng.uniform(3, 10) * scale
        wave = 0.5 + 0.5 * np.sin(2 * math.pi * (yy + phase) / period)
        bg += (wave**4)[:, :, None] * tint
    elif kind == 1:  # ruled lines (notebook, form), thin and faint
        pitch = rng.uniform(0.7, 1.4) * 32 * scale
        off = rng.uniform(0, pitch)
        ruled = np.exp(-(((yy - off) % pitch) ** 2) / 1.5)
        bg += ruled[:, :, None] * tint
    else:  # squared paper
        pitch = rng.uniform(0.3, 0.6) * 32 * scale
        grid = np.maximum(np.exp(-((yy % pitch) ** 2) / 1.0), np.exp(-((xx % pitch) ** 2) / 1.0))
        bg += grid[:, :, None] * tint * 0.7
    # Fibres / specks: a few dark dots.
    n = int(h * w / 4000 * rng.uniform(0.5, 2.0))
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    bg[ys, xs] -= rng.uniform(30, 90, (n, 1))
    return bg


# --------------------------------------------------------------------------- geometric


def rotate_layers(layers: list[Image.Image], rng: Rng, max_deg: float, min_deg: float = 0.0) -> tuple[list[Image.Image], PointMap, float]:
    """Rotate the ink layers about their centre (expanding the canvas) and map points alike."""
    deg = rng.uniform(min_deg, max_deg) * (1 if rng.random() < 0.5 else -1)
    w, h = layers[0].size
    out = [im.rotate(deg, resample=Image.Resampling.BICUBIC, expand=True) for im in layers]
    nw, nh = out[0].size
    a = math.radians(deg)

    def move(x: float, y: float) -> tuple[float, float]:
        dx, dy = x - w / 2, y - h / 2
        return nw / 2 + dx * math.cos(a) + dy * math.sin(a), nh / 2 - dx * math.sin(a) + dy * math.cos(a)

    return out, move, deg


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 H with H @ (src, 1) ~ (dst, 1), from four point pairs."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    coeffs = np.linalg.solve(np.array(rows, np.float64), np.array(rhs, np.float64))
    return np.append(coeffs, 1.0).reshape(3, 3)


def warp_layers(layers: list[Image.Image], corners: np.ndarray) -> tuple[list[Image.Image], PointMap]:
    """Move the image corners (TL, TR, BR, BL) to `corners` on a canvas that holds them all."""
    w, h = layers[0].size
    corners = corners - corners.min(axis=0)
    size = (math.ceil(corners[:, 0].max()) + 1, math.ceil(corners[:, 1].max()) + 1)
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    forward = _homography(src, corners)
    inverse = _homography(corners, src)  # PIL wants output -> input
    coeffs = tuple(float(c) for c in (inverse / inverse[2, 2]).ravel()[:8])
    out = [im.transform(size, Image.Transform.PERSPECTIVE, coeffs, resample=Image.Resampling.BICUBIC) for im in layers]

    def move(x: float, y: float) -> tuple[float, float]:
        u, v, s = forward @ np.array([x, y, 1.0])
        return float(u / s), float(v / s)

    return out, move


def keystone_corners(rng: Rng, w: int, h: int, strength: float) -> np.ndarray:
    """A plane seen at an angle: one side shorter than the other, plus a little shear and jitter."""
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    squeeze = rng.uniform(0.5, 1.0) * strength
    if rng.random() < 0.5:  # left/right edge shorter (turned about a vertical axis)
        side = [1, 2] if rng.random() < 0.5 else [0, 3]
        corners[side[0], 1] += squeeze * h / 2
        corners[side[1], 1] -= squeeze * h / 2
    else:  # top/bottom edge shorter (tilted about a horizontal axis)
        side = [0, 1] if rng.random() < 0.5 else [3, 2]
        corners[side[0], 0] += squeeze * w / 2 * min(1.0, h / w * 4)
        corners[side[1], 0] -= squeeze * w / 2 * min(1.0, h / w * 4)
    shear = rng.uniform(-0.15, 0.15) * h * strength * 2
    corners[[0, 1], 0] += shear
    corners += rng.normal(0, 0.01 * strength * min(w, h) * 3, corners.shape)
    return corners
