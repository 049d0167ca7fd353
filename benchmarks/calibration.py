"""Peak memory / wall time: raw ``quantize_static`` vs quant's streaming calibration.

    python benchmarks/calibration.py --model rec --images 10 --method minmax
    python benchmarks/calibration.py --model det --images 10 --method entropy --image-dir pics/

Each side runs in its own subprocess so peak RSS (``wait4`` rusage) is per run:

* raw:   ``quantize_static(model, reader, calibrate_method=...)``
* quant: ``collect_ranges(...)`` + ``quantize_with_ranges(...)`` calibrating the same
  tensors (``quantize_static_default_op_types()``)

Inputs are synthesised with varied widths / page sizes (seeded, identical for both sides)
unless ``--image-dir`` gives PNG/JPG files. A side whose RSS exceeds ``--limit-mb`` is
killed (the machine is shared). When both sides finish, the quantized models are compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(
    os.environ.get("QUANT_OCR_MODELS", "/tmp/probe/lib/python3.11/site-packages/rapidocr_onnxruntime/models")
)
MODELS = {"rec": "ch_PP-OCRv4_rec_infer.onnx", "det": "ch_PP-OCRv4_det_infer.onnx"}
METHODS = ("minmax", "entropy", "percentile", "distribution")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


# ------------------------------------------------------------------------------ inputs


def _normalise(bgr: np.ndarray) -> np.ndarray:
    # PP-OCR / rapidocr: (x/255 - 0.5)/0.5, HWC BGR -> NCHW float32.
    x = (bgr.astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _rec_size(h: int, w: int) -> tuple[int, int]:
    return 48, max(8, math.ceil(48 * w / h))


def _det_size(h: int, w: int, limit: int = 960) -> tuple[int, int]:
    ratio = min(1.0, limit / max(h, w))
    return (max(32, int(round(h * ratio / 32) * 32)), max(32, int(round(w * ratio / 32) * 32)))


def _synthetic_shape(model: str, rng: np.random.Generator) -> tuple[int, int]:
    if model == "rec":  # text lines: aspect ratio 1..33 at height 48
        return 48, int(rng.integers(48, 1600)) // 8 * 8
    longer = int(rng.integers(320, 961))
    shorter = int(longer * rng.uniform(0.5, 1.0))
    h, w = (longer, shorter) if rng.random() < 0.5 else (shorter, longer)
    return _det_size(h, w)


class Inputs:
    """Re-iterable, lazily generated feeds (histogram methods read them several times)."""

    def __init__(self, model: str, count: int, seed: int, image_dir: Path | None, same_size: bool = False) -> None:
        self.model, self.count, self.seed, self.same_size = model, count, seed, same_size
        self.files = _image_files(image_dir, count) if image_dir else None

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else self.count

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self.files is not None:
            yield from ({"x": _load_image(self.model, f)} for f in self.files)
            return
        rng = np.random.default_rng(self.seed)
        first = _synthetic_shape(self.model, np.random.default_rng(self.seed))
        for _ in range(self.count):
            h, w = _synthetic_shape(self.model, rng)
            h, w = first if self.same_size else (h, w)
            # Smooth-ish random "image": values like a real page/line, cheap to make.
            img = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
            yield {"x": _normalise(np.repeat(np.repeat(img, 4, 0), 4, 1)[:h, :w])}


def _image_files(image_dir: Path, count: int) -> list[Path]:
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no PNG/JPG files in {image_dir}")
    return files[:count]


def _load_image(model: str, path: Path) -> np.ndarray:
    import cv2  # only needed for real images

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    h, w = bgr.shape[:2]
    size = _rec_size(h, w) if model == "rec" else _det_size(h, w)
    return _normalise(cv2.resize(bgr, (size[1], size[0])))


# ------------------------------------------------------------------------------ worker


def _worker(args: argparse.Namespace) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, quantize_static

    model = MODELS_DIR / MODELS[args.model]
    inputs = Inputs(args.model, args.images, args.seed, args.image_dir, args.same_size)
    out = args.out_dir / f"{args.worker}.onnx"
    start = time.perf_counter()
    result: dict = {"side": args.worker}
    if args.worker == "raw":

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(inputs)

            def get_next(self) -> dict | None:
                return next(self._it, None)

        method = {
            m: getattr(CalibrationMethod, n)
            for m, n in zip(METHODS, ("MinMax", "Entropy", "Percentile", "Distribution"), strict=True)
        }
        quantize_static(str(model), str(out), Reader(), calibrate_method=method[args.method])
    else:
        sys.path.insert(0, str(REPO))
        from quant.calibration.streaming import collect_ranges, quantize_static_default_op_types, quantize_with_ranges

        with tempfile.TemporaryDirectory(prefix="quant-bench-") as work:
            ranges = collect_ranges(
                model,
                inputs,
                args.method,
                op_types_to_calibrate=quantize_static_default_op_types(),
                work_dir=Path(work),
                max_pass_bytes=args.max_pass_mb * 2**20,
            )
        result["calib_s"] = time.perf_counter() - start
        quantize_with_ranges(model, out, ranges)
    result["wall_s"] = time.perf_counter() - start
    result["self_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    return result


# ------------------------------------------------------------------------------ parent


@dataclass
class Run:
    side: str
    status: str
    peak_mb: float
    wall_s: float
    calib_s: float | None = None
    sha256: str | None = None


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def _run_side(side: str, args: argparse.Namespace, out_dir: Path) -> Run:
    cmd = [sys.executable, __file__, "--worker", side, "--out-dir", str(out_dir), *_forwarded(args)]
    stdout_path, stderr_path = out_dir / f"{side}.stdout", out_dir / f"{side}.stderr"
    start = time.perf_counter()
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr)
    killed = threading.Event()

    def guard() -> None:  # shared machine: never let one side take it all
        while not done.is_set():
            if _rss_kb(proc.pid) > args.limit_mb * 1024:
                killed.set()
                os.kill(proc.pid, signal.SIGKILL)  # not proc.send_signal: its poll() would reap the child
            time.sleep(0.2)

    done = threading.Event()
    threading.Thread(target=guard, daemon=True).start()
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child only
    done.set()
    returncode = os.waitstatus_to_exitcode(status)
    wall, peak = time.perf_counter() - start, usage.ru_maxrss / 1024
    if killed.is_set():
        return Run(side, f"killed >{args.limit_mb} MB", peak, wall)
    if returncode != 0:
        last = (stderr_path.read_text().strip().splitlines() or ["?"])[-1]
        return Run(side, f"error: {last[:200]}", peak, wall)
    data = json.loads(stdout_path.read_text().strip().splitlines()[-1])
    return Run(side, "ok", peak, data["wall_s"], data.get("calib_s"), data["sha256"])


def _forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--model", args.model, "--images", str(args.images), "--method", args.method, "--seed", str(args.seed)]
    out += ["--max-pass-mb", str(args.max_pass_mb)] + (["--same-size"] if args.same_size else [])
    return out + (["--image-dir", str(args.image_dir)] if args.image_dir else [])


def _table(runs: list[Run], args: argparse.Namespace) -> str:
    head = (
        f"model={args.model} images={args.images} method={args.method} "
        + (f"image_dir={args.image_dir}" if args.image_dir else f"synthetic seed={args.seed}")
        + (" same-size" if args.same_size and not args.image_dir else "")
    )
    lines = [head, f"{'side':6} {'status':28} {'peak RSS MB':>12} {'wall s':>8} {'calib s':>8}"]
    for r in runs:
        calib = f"{r.calib_s:8.1f}" if r.calib_s is not None else f"{'-':>8}"
        lines.append(f"{r.side:6} {r.status[:28]:28} {r.peak_mb:12.0f} {r.wall_s:8.1f} {calib}")
    if len(runs) == 2:
        raw, ours = runs
        lines.append(f"{'quant/raw':35} {ours.peak_mb / raw.peak_mb:12.2f} {ours.wall_s / raw.wall_s:8.2f}")
        if raw.status == "ok" and ours.status == "ok":
            lines.append(f"quantized models byte-identical: {raw.sha256 == ours.sha256}")
        elif raw.status != "ok":
            lines.append("(raw did not finish: its ratio compares against the point where it died)")
    lines.extend(f"{r.side}: {r.status}" for r in runs if len(r.status) > 28)
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="rec")
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--method", choices=METHODS, default="minmax")
    p.add_argument("--image-dir", type=Path, default=None, help="folder of PNG/JPG (default: synthetic inputs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--same-size", action="store_true", help="synthetic inputs all of one shape (raw histograms work)")
    p.add_argument("--max-pass-mb", type=int, default=256, help="histogram methods: output bytes per pass")
    p.add_argument("--limit-mb", type=int, default=10_000, help="kill a side whose RSS exceeds this")
    p.add_argument("--only", choices=("raw", "quant"), help="run one side only")
    p.add_argument("--worker", choices=("raw", "quant"), help=argparse.SUPPRESS)
    p.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.worker:
        print(json.dumps(_worker(args)), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="quant-bench-out-") as out_dir:
        sides = [args.only] if args.only else ["raw", "quant"]
        runs = [_run_side(side, args, Path(out_dir)) for side in sides]
    print(_table(runs, args))


if __name__ == "__main__":
    main()
