"""Where a run's time goes: a light record of each stage (checks, FP32 reference, each build and its
calibration, each evaluation, latency benchmark, search ranking, publish), kept in results.json as `stages`.

The runner opens a `StageLog` for its run (`recording`); code on the run's threads wraps a stage in
`timed(stage, variant, split)`. A unit the executor runs inside that block reports its own span
(`unit_ran`), and the stage is recorded as that span: the time the work ran, without the time it waited
for a free job under `--jobs`. Without an open log nothing is recorded. Stages may overlap under `--jobs`
(their start times say so); `benchmarks/stage_times.py` turns them into shares of the wall time.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Stage:
    stage: str  # "checks", "reference", "build", "calibration", "evaluation", "latency", "search build", "search ranking", ...
    variant: str | None
    split: str | None  # the split an evaluation or benchmark ran on: a search judges its attempts on "tuning"
    started: float  # epoch seconds (time.time()): comparable across the recipes and processes of one invocation
    seconds: float
    peak_rss_mb: float | None = None  # the peak memory of the unit's own process, when it had one

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class StageLog:
    """The stages of one run, appended from any of its threads."""

    stages: list[Stage] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, stage: str, variant: str | None, split: str | None, started: float, seconds: float, peak_rss_mb: float | None = None) -> None:
        """`started`: epoch seconds (time.time(), comparable across this machine's processes)."""
        with self._lock:
            self.stages.append(Stage(stage, variant, split, round(started, 3), round(seconds, 3), peak_rss_mb))

    def records(self) -> list[dict[str, object]]:
        with self._lock:
            return [s.to_dict() for s in sorted(self.stages, key=lambda s: s.started)]


@dataclass
class _Open:
    """A `timed` block: the spans of the units that ran inside it."""

    spans: list[tuple[float, float, float | None]] = field(default_factory=list)  # (started, seconds, peak_rss_mb)


_LOG: contextvars.ContextVar[StageLog | None] = contextvars.ContextVar("quant_stage_log", default=None)
_OPEN: contextvars.ContextVar[_Open | None] = contextvars.ContextVar("quant_open_stage", default=None)


@contextlib.contextmanager
def recording() -> Iterator[StageLog]:
    """Open a log for this run; stages timed in this context (and the threads its executor starts) go into it."""
    log = StageLog()
    token = _LOG.set(log)
    try:
        yield log
    finally:
        _LOG.reset(token)


@contextlib.contextmanager
def timed(stage: str, variant: str | None = None, split: str | None = None) -> Iterator[None]:
    """Record the block as `stage` (of `variant`, on `split`) when a log is open, also when it raises: as the
    spans of the units that ran inside it, or, when none did, as the block's own time."""
    log = _LOG.get()
    if log is None:
        yield
        return
    block = _Open()
    token = _OPEN.set(block)
    started = time.time()
    try:
        yield
    finally:
        _OPEN.reset(token)
        for unit_started, seconds, peak in block.spans or [(started, time.time() - started, None)]:
            log.add(stage, variant, split, unit_started, seconds, peak)


def unit_ran(stats: Mapping[str, float], own_process: bool) -> None:
    """The executor reports a unit's own span ({started: epoch seconds, seconds, peak_rss_mb}) to the stage open
    around it; the peak only when the unit had a process of its own (else it is the run's)."""
    block = _OPEN.get()
    if block is not None and "started" in stats:
        block.spans.append((stats["started"], stats["seconds"], stats.get("peak_rss_mb") if own_process else None))


def record_calibration(variant: str, details: Mapping[str, object]) -> None:
    """Inside a `timed` build: its calibration (measured in its process: `calibration_seconds`) as a stage at the build's start."""
    log, block = _LOG.get(), _OPEN.get()
    seconds = details.get("calibration_seconds")
    if log is not None and block is not None and block.spans and isinstance(seconds, (int, float)) and seconds > 0:
        log.add("calibration", variant, None, block.spans[-1][0], float(seconds))
