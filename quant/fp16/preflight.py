"""Running the pre-flight scan for a variant: on the tuning samples, in a child process, cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from quant.calibration.ranges import SourceFeeds
from quant.data.sources import SampleSource
from quant.executor import run_isolated
from quant.fp16.scan import Finding, Preflight, scan
from quant.methods.base import BuildContext, Dims
from quant.methods.fp16 import fp16_source
from quant.model import file_sha256
from quant.recipe.schema import Fp16Options

SCAN_VERSION = 1  # part of the cache key: bump when what the scan finds changes


def _scan_in_child(source: Path, tuning: SampleSource, model_inputs: dict[str, Dims], headroom: float) -> Preflight:
    started = time.perf_counter()
    result = scan(source, SourceFeeds(tuning, model_inputs), headroom)
    result.seconds = time.perf_counter() - started
    return result


def _cache_file(cache_dir: Path, source_sha256: str, tuning: SampleSource, headroom: float) -> Path:
    settings = f"{tuning.fingerprint}|{tuning.feeds_signature}|{headroom}|scan-v{SCAN_VERSION}"
    key = hashlib.sha256(f"{source_sha256}|{settings}".encode()).hexdigest()[:32]
    return cache_dir / "fp16-preflight" / f"{key}.json"


def run_preflight(options: Fp16Options, context: BuildContext, tuning: SampleSource) -> tuple[Preflight, Path]:
    """The scan's findings for this variant's FP32 source model, and that model's path (normalised or not)."""
    # Normalising is cached and cheap; the cache key needs the exact bytes the scan reads.
    source = fp16_source(options, context)
    cache_file = _cache_file(context.cache_dir, file_sha256(source), tuning, options.preflight.headroom)
    if cache_file.is_file():
        data = json.loads(cache_file.read_text(encoding="utf-8"))
        return replace(Preflight.from_dict(data), cache_hit=True, seconds=0.0), source
    result, _ = run_isolated(_scan_in_child, source, tuning, context.model_inputs, options.preflight.headroom)
    record = {**result.to_dict(), "findings_all": [f.to_dict() for f in result.findings]}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    staging = cache_file.with_name(cache_file.name + f".tmp{os.getpid()}")
    staging.write_text(json.dumps(record), encoding="utf-8")
    os.replace(staging, cache_file)  # a crash never leaves half a cache entry
    return result, source


__all__ = ["Finding", "Preflight", "run_preflight"]
