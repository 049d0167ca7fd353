"""Where builds run. Each build runs in a fresh child process: a crash or a leak in a quantizer
cannot take the run down, the cwd temp files of onnxruntime stay out of the way, and the peak
memory of each build can be measured on its own."""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
import resource
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from quant.errors import WRITE_ERRNOS, BuildError, OutputError, QuantError
from quant.methods.base import BuildContext, BuildResult, builder_for

T = TypeVar("T")


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process's own address space. ru_maxrss survives exec, so in a spawned
    # child it starts at the parent's RSS when it forked (GBs with a big model loaded): not the build's peak.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _DropAdvice(logging.Filter):
    """onnxruntime logs advice to pre-process on every unprepared build; the recipe's `prepare` decides that."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _call(function: Callable[..., T], args: tuple[Any, ...]) -> tuple[T | None, QuantError | None, float, float]:
    logging.getLogger().addFilter(_DropAdvice())
    started = time.perf_counter()
    try:
        # onnxruntime's histogram calibrators print() their settings; the run's stdout is the summary alone.
        with contextlib.redirect_stdout(io.StringIO()):
            return function(*args), None, time.perf_counter() - started, _peak_rss_mb()
    except QuantError as error:
        return None, error, time.perf_counter() - started, _peak_rss_mb()
    except Exception as error:  # a quantizer bug: reported on the variant, with where it happened
        if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:  # disk full, read-only: the whole run stops (exit 2)
            return (
                None,
                OutputError(f"cannot write: {error.strerror}", file=str(error.filename or "the run folder"), field="--out"),
                time.perf_counter() - started,
                _peak_rss_mb(),
            )
        tail = " | ".join(line.strip() for line in traceback.format_exc().strip().splitlines()[-3:])
        return None, BuildError(f"{type(error).__name__}: {str(error)[:300]} ({tail})"), time.perf_counter() - started, _peak_rss_mb()


def run_isolated(function: Callable[..., T], *args: Any) -> tuple[T, dict[str, float]]:
    """Run a top-level function in a fresh child process; returns its result and {seconds, peak_rss_mb}.

    Bad input (InputError) re-raises as-is (exit 2); any other failure becomes a BuildError."""
    spawn = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            result, error, seconds, peak = pool.submit(_call, function, args).result()
    except BrokenProcessPool:
        raise BuildError("the build process died (killed, or out of memory)") from None
    if error is not None:
        raise error
    return result, {"seconds": round(seconds, 3), "peak_rss_mb": round(peak, 1)}  # type: ignore[return-value]


def _build(options: Any, context: BuildContext, out_path: Path) -> BuildResult:
    return builder_for(options)(options, context, out_path)


def build_isolated(options: Any, context: BuildContext, out_path: Path) -> BuildResult:
    """Run a method's build in a child process and record its time and peak memory.

    The child is a fresh interpreter: `context.log` must be a top-level function (it is pickled)."""
    result, stats = run_isolated(_build, options, context, out_path)
    result.details.update({"build_seconds": stats["seconds"], "build_peak_rss_mb": stats["peak_rss_mb"]})
    return result
