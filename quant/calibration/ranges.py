"""Activation ranges for static INT8: computed once per (model bytes, data, settings), cached as JSON.

The cache file is onnxruntime's own calibration-cache format, so quantize_static reads it directly
and the quantized graph is still onnxruntime's.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnxruntime
from onnxruntime.quantization.calibrate import save_tensors_data

from quant.calibration.streaming import collect_ranges, quantize_static_default_op_types
from quant.data.feeds import checked_feeds
from quant.data.sources import Feeds, SampleSource
from quant.files import remove_abandoned
from quant.model import Dims
from quant.testpoint import pause_point

CACHE_FORMAT = 1


class SourceFeeds:
    """Re-iterable feeds of a source: histogram calibration reads the data in several passes."""

    def __init__(self, source: SampleSource, model_inputs: dict[str, Dims]) -> None:
        self.source = source
        self.model_inputs = model_inputs

    def __iter__(self) -> Iterator[Feeds]:
        for index, (_, feeds) in enumerate(checked_feeds(self.source, self.model_inputs)):
            if index == 1:
                pause_point("calibration")  # one sample in: a crash here must leave no cache entry
            yield feeds


@dataclass(frozen=True)
class CalibrationRanges:
    cache_file: Path
    method: str
    samples: int
    cache_hit: bool
    seconds: float
    key: str

    def describe(self) -> dict[str, object]:
        return {
            "method": self.method,
            "samples": self.samples,
            "cache_hit": self.cache_hit,
            "seconds": round(self.seconds, 3),
            "key": self.key,
        }


def cache_key(
    model_sha256: str, data_fingerprint: str, feeds_signature: str, method: str, percentile: float, op_types: list[str] | None,
    threads: int | None = None,
) -> str:  # fmt: skip
    """Every input that changes the ranges is in the key: the bytes of the model calibrated (after
    `prepare`), the chosen samples' contents, how a sample becomes feeds (resize, scale, mean/std,
    colour, layout), the method and its percentile, the op types observed, the onnxruntime
    version (its histogram code and default op types) and its intra-op thread count (the last bits
    of an unoptimised Conv can depend on it)."""
    settings = json.dumps(
        {
            "format": CACHE_FORMAT,
            "onnxruntime": onnxruntime.__version__,
            "feeds": feeds_signature,
            "method": method,
            "percentile": percentile if method == "percentile" else None,
            "op_types": sorted(op_types) if op_types else None,
        }
        | ({"threads": threads} if threads is not None else {}),  # unpinned (onnxruntime's default): the key as before
        sort_keys=True,
    )
    return hashlib.sha256(f"{model_sha256}|{data_fingerprint}|{settings}".encode()).hexdigest()[:32]


def calibration_ranges(
    model_path: Path,
    model_sha256: str,
    source: SampleSource,
    model_inputs: dict[str, Dims],
    *,
    method: str,
    percentile: float,
    op_types: list[str] | None,
    cache_dir: Path,
    log: Callable[[str], None],
    progress: Callable[[int], None] | None = None,  # samples done, per pass (the calibration test point's test counts them)
    threads: int | None = None,  # onnxruntime intra-op threads (None: its default, every core)
) -> CalibrationRanges:
    key = cache_key(model_sha256, source.fingerprint, source.feeds_signature, method, percentile, op_types, threads)
    cache_file = cache_dir / "calibration" / f"{key}.json"
    if cache_file.is_file():
        log(f"calibration: reusing cached {method} ranges ({cache_file.name})")
        return CalibrationRanges(cache_file, method, len(source), True, 0.0, key)
    log(f"calibration: {method} on {len(source)} samples")
    started = time.perf_counter()
    work_root = cache_dir / "calibration"
    work_root.mkdir(parents=True, exist_ok=True)
    remove_abandoned(work_root.glob(".work-*"), lambda name: name.split("-")[1])  # scratch of a killed run
    # A private scratch folder: runs sharing a cache never overwrite each other's augmented model, and it goes away.
    with tempfile.TemporaryDirectory(dir=work_root, prefix=f".work-{os.getpid()}-") as work_dir:
        ranges = collect_ranges(
            model_path,
            SourceFeeds(source, model_inputs),
            method,
            percentile=percentile,
            # The tensors quantize_static itself would calibrate for these op types.
            op_types_to_calibrate=op_types or quantize_static_default_op_types(),
            work_dir=Path(work_dir),
            progress=progress,
            threads=threads,
        )
    # save_tensors_data writes to a temporary file and renames it: a crash never leaves half a cache.
    save_tensors_data(ranges, cache_file)
    return CalibrationRanges(cache_file, method, len(source), False, time.perf_counter() - started, key)
