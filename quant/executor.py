"""Where builds run. Each build runs in a fresh child process: a crash or a leak in a quantizer
cannot take the run down, the cwd temp files of onnxruntime stay out of the way, and the peak
memory of each build can be measured on its own."""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from quant.errors import BuildError, QuantError
from quant.methods.base import BuildContext, BuildResult, builder_for


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_build(options: Any, context: BuildContext, out_path: Path, extra: dict[str, Any]) -> tuple[BuildResult | None, QuantError | None, float, float]:
    started = time.perf_counter()
    try:
        result = builder_for(options)(options, context, out_path, **extra)
        return result, None, time.perf_counter() - started, _peak_rss_mb()
    except QuantError as error:
        return None, error, time.perf_counter() - started, _peak_rss_mb()
    except Exception as error:  # a quantizer bug: reported on the variant, with where it happened
        tail = " | ".join(line.strip() for line in traceback.format_exc().strip().splitlines()[-3:])
        return None, BuildError(f"{type(error).__name__}: {str(error)[:300]} ({tail})"), time.perf_counter() - started, _peak_rss_mb()


def build_isolated(options: Any, context: BuildContext, out_path: Path, **extra: Any) -> tuple[BuildResult, dict[str, Any]]:
    """Run a method's build in a child process. Bad input re-raises as-is (exit 2); any other failure is a BuildError."""
    context_for_child = BuildContext(**{**context.__dict__, "log": log_to_stderr})
    spawn = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            result, error, seconds, peak = pool.submit(_run_build, options, context_for_child, out_path, extra).result()
    except BrokenProcessPool:
        raise BuildError("the build process died (killed, or out of memory)") from None
    if error is not None:
        raise error
    assert result is not None
    result.details.update({"build_seconds": round(seconds, 3), "build_peak_rss_mb": round(peak, 1)})
    return result, {"seconds": round(seconds, 3), "peak_rss_mb": round(peak, 1)}
