"""Where units of work run: the seam between the runner and the machine(s) that do the work.

A *unit* is a top-level function of picklable, typed arguments that writes only to paths it is given
(a build of one variant, the evaluation of one model file on a split, a sensitivity ranking, an FP16
scan): it can run in a fresh child process here, or as a task on another machine. The runner never
starts processes itself; it asks the current `Executor`:

* `call(unit, *args, fresh=True)`: run one unit isolated (a fresh child process; a Ray task), blocking the
  calling thread; several threads may call at once and the executor runs at most its `jobs` units at a time.
  Returns the unit's result and {seconds, peak_rss_mb, started}; an exception raised by the unit is re-raised.
  `fresh=False` (evaluations): the unit needs no process of its own, so a local executor runs it on the
  calling thread (still within its jobs) and saves the process start-up; a remote executor may still ship it.
* `alone(unit, *args)`: run a unit with nothing else running (a latency benchmark: a ratio timed under
  load is worthless). It starts once no unit runs or waits to run (the benchmarks come after the work that is
  ready: a benchmark asked for early does not make the cores drain and idle) and holds new units back until done.
* `slot()`: a context in which the calling thread does work itself (the FP32 reference, with its
  progress bar), counted as one running unit.
* `each(tasks)`: run driver-side tasks (one variant's build-judge pipeline, one recipe) concurrently;
  their results in order. Each task calls `call`/`alone` as it goes; the units bound the work.

`SerialExecutor` runs everything one after another (the default, as before `--jobs`); `LocalExecutor`
runs up to `jobs` units at once in child processes on this machine (`quantize --jobs N`). A build uses
the recipe's `bench.threads` onnxruntime threads whatever the executor: onnxruntime's results can change
with the thread count (a Conv with ORT_DISABLE_ALL, as calibration runs it, differs in the last bits
between 1 and 2 threads), and the models must be the same whatever `--jobs` is. An inference unit (the FP32
reference, an evaluation: optimised graphs, the same outputs at any count) takes `inference_threads`, its
share of the cores, and a unit's process under several jobs does not let idle threads spin (quant.cores).

The executor of a run is set with `using(executor)` and read with `current()` (a context variable, so
each recipe and variant thread sees the one its run set, and a child process always runs serially).
`run_isolated` (any failure of the function becomes the variant's BuildError) and `build_isolated`
are the units the builders use; both go through `current()`.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import multiprocessing
import resource
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from quant.cores import inference_threads, local_shard_samples, share_cores, windows
from quant.errors import WRITE_ERRNOS, BuildError, OutputError, QuantError
from quant.machine import CpuFacts, cpu_facts
from quant.scoped import scoped
from quant.stages import unit_ran

if TYPE_CHECKING:  # the methods (and onnxruntime.quantization) are imported by the build units alone: a unit's process starts light
    from quant.compare import OutputComparison
    from quant.methods.base import BuildContext, BuildResult
    from quant.needs import Needs
    from quant.shards import Evaluation

T = TypeVar("T")
Stats = dict[str, float]  # {"seconds": wall time of the unit, "peak_rss_mb": its process's peak memory, "started": epoch seconds}


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


def run_unit(unit: Callable[..., T], args: tuple[Any, ...]) -> tuple[T, Stats]:
    """What a worker does with a unit (in a child process, or a Ray task): run it quietly, time it, take its peak memory.

    Exceptions propagate to the caller. Public so that other executors run units exactly this way."""
    logging.getLogger().addFilter(_DropAdvice())
    started, clock = time.time(), time.perf_counter()
    # onnxruntime's histogram calibrators print() their settings; the run's stdout is the summary alone.
    with contextlib.redirect_stdout(io.StringIO()):
        result = unit(*args)
    return result, {"seconds": round(time.perf_counter() - clock, 3), "peak_rss_mb": round(_peak_rss_mb(), 1), "started": started}


def in_fresh_process(unit: Callable[..., T], *args: Any, initializer: Callable[[], None] | None = None) -> tuple[T, Stats]:
    """Run a unit in a fresh spawned interpreter (its own memory, its own peak); its exception is re-raised here.
    `initializer` runs first in that interpreter."""
    spawn = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=initializer) as pool:
            result, stats = pool.submit(run_unit, unit, args).result()
    except BrokenProcessPool:
        raise ProcessLost("its process died (killed, or out of memory)") from None
    unit_ran(stats, own_process=True)
    return result, stats


def in_this_process(unit: Callable[..., T], *args: Any) -> tuple[T, Stats]:
    """A unit that needs no process of its own (an evaluation: no crash-prone quantizer, no leak) on the calling
    thread: no process start-up (a second or more per unit); onnxruntime releases the GIL while it runs."""
    started, clock = time.time(), time.perf_counter()
    result = unit(*args)
    stats = {"seconds": round(time.perf_counter() - clock, 3), "peak_rss_mb": round(_peak_rss_mb(), 1), "started": started}
    unit_ran(stats, own_process=False)
    return result, stats


def run_alone(unit: Callable[..., T], *args: Any) -> T:
    """A benchmark in this process (the executor made sure nothing else runs); its span goes to the open stage."""
    started, clock = time.time(), time.perf_counter()
    result = unit(*args)
    unit_ran({"started": started, "seconds": time.perf_counter() - clock}, own_process=False)
    return result


class ProcessLost(BuildError):
    """A unit's process died under it (killed, out of memory): nothing it wrote counts, and running it again is safe."""


class Executor(Protocol):
    """How the runner gets its units of work done (see the module's docstring)."""

    jobs: int

    def call(self, unit: Callable[..., T], *args: Any, fresh: bool = True) -> tuple[T, Stats]: ...

    def alone(self, unit: Callable[..., T], *args: Any) -> T: ...

    def slot(self) -> contextlib.AbstractContextManager[None]: ...

    def in_windows(self, fill: Callable[[int, int], None], count: int) -> None:
        """Work the calling thread does itself over `count` independent samples (the FP32 reference): `fill(start, stop)`
        for windows covering them, each counted as one running unit."""
        ...

    def inference_threads(self, wanted: int) -> int:
        """onnxruntime threads for an inference unit (FP32 reference, evaluation) of a recipe whose bench.threads is `wanted`."""
        ...

    def target_cpu(self) -> CpuFacts:
        """The CPU of the machine that measures latency (the release's target), whose flags decide e.g. 8-bit weights."""
        ...

    def each(self, tasks: Sequence[Callable[[], T]]) -> list[T]: ...

    def check(self, needs: Needs, places: Mapping[str, Path]) -> None:
        """Before anything is built: can the units of a run with these needs run, and reach `places` ({field: path})?"""


class SerialExecutor:
    """One unit at a time, each in a fresh child process; benchmarks in this process."""

    jobs = 1

    def call(self, unit: Callable[..., T], *args: Any, fresh: bool = True) -> tuple[T, Stats]:
        return in_fresh_process(unit, *args) if fresh else in_this_process(unit, *args)

    def alone(self, unit: Callable[..., T], *args: Any) -> T:
        return run_alone(unit, *args)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        yield

    def in_windows(self, fill: Callable[[int, int], None], count: int) -> None:
        fill(0, count)

    def inference_threads(self, wanted: int) -> int:
        return wanted

    def target_cpu(self) -> CpuFacts:
        return cpu_facts()  # benchmarks run in this process

    def each(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        return [task() for task in tasks]

    def check(self, needs: Needs, places: Mapping[str, Path]) -> None:
        """On this machine the run's places are where the checks found them."""


class LocalExecutor:
    """Up to `jobs` units at once on this machine, each in a fresh child process; `alone` waits until none runs."""

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.jobs = jobs
        self._state = threading.Condition()
        self._running = 0
        self._queued = 0  # units waiting for a slot: a benchmark lets them go first
        self._benchmarking = False  # a benchmark runs: no unit starts

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._state:
            self._queued += 1
            self._state.wait_for(lambda: self._running < self.jobs and not self._benchmarking)
            self._queued -= 1
            self._running += 1
        try:
            yield
        finally:
            with self._state:
                self._running -= 1
                self._state.notify_all()

    def call(self, unit: Callable[..., T], *args: Any, fresh: bool = True) -> tuple[T, Stats]:
        if not fresh and self.jobs > 1:
            from quant.shards import as_evaluation  # imports onnxruntime: not at a unit process's start

            evaluation = as_evaluation(unit, args)
            if evaluation is not None and len(evaluation.source) > local_shard_samples(len(evaluation.source), self.jobs):
                return self._in_shards(evaluation)  # type: ignore[return-value]  (unit is evaluate_variant)
        with self.slot():
            if fresh:
                return in_fresh_process(unit, *args, initializer=share_cores if self.jobs > 1 else None)
            return in_this_process(unit, *args)

    def _in_shards(self, evaluation: Evaluation) -> tuple[dict[str, OutputComparison], Stats]:
        """An evaluation as shards, each a unit of its own (quant.shards): the jobs share it, a benchmark waits for one shard."""
        from quant.shards import evaluate_window, merged

        started, clock = time.time(), time.perf_counter()
        bounds = windows(len(evaluation.source), local_shard_samples(len(evaluation.source), self.jobs))
        shards = self.each([partial(self.call, evaluate_window, evaluation, start, stop, fresh=False) for start, stop in bounds])
        whole = merged([comparisons for comparisons, _ in shards])
        return whole, {"seconds": round(time.perf_counter() - clock, 3), "peak_rss_mb": round(_peak_rss_mb(), 1), "started": started}

    def in_windows(self, fill: Callable[[int, int], None], count: int) -> None:
        """Shards of a few per job (quant.cores.local_shard_samples), side by side, each holding a slot; one job: one window."""
        if self.jobs == 1:
            with self.slot():
                fill(0, count)
            return

        def window(start: int, stop: int) -> None:
            with self.slot():
                fill(start, stop)

        self.each([partial(window, start, stop) for start, stop in windows(count, local_shard_samples(count, self.jobs))])

    def inference_threads(self, wanted: int) -> int:
        """Each of the jobs gets its share of the cores (the outputs are the same: quant.cores)."""
        return inference_threads(wanted, self.jobs)

    def target_cpu(self) -> CpuFacts:
        return cpu_facts()  # benchmarks run in this process

    def alone(self, unit: Callable[..., T], *args: Any) -> T:
        with self._state:
            self._state.wait_for(self._idle)
            self._benchmarking = True  # nothing starts meanwhile
        try:
            return run_alone(unit, *args)
        finally:
            with self._state:
                self._benchmarking = False
                self._state.notify_all()

    def _idle(self) -> bool:
        """No unit runs or waits for a slot, and no benchmark runs (called holding `_state`)."""
        return self._running == 0 and self._queued == 0 and not self._benchmarking

    def each(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        if len(tasks) <= 1:
            return [task() for task in tasks]
        with ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="quant-task") as pool:
            # Each thread runs in a copy of this context: it sees the executor `using` set.
            futures = [pool.submit(contextvars.copy_context().run, task) for task in tasks]
            return [future.result() for future in futures]

    def check(self, needs: Needs, places: Mapping[str, Path]) -> None:
        """On this machine the run's places are where the checks found them."""


_CURRENT: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("quant_executor", default=None)
_SERIAL = SerialExecutor()


def current() -> Executor:
    """The executor of the run this thread belongs to (serial unless a run set another)."""
    return _CURRENT.get() or _SERIAL


def using(executor: Executor) -> contextlib.AbstractContextManager[Executor]:
    """Make `executor` the one `current()` returns in this context (and the tasks `each` starts from it)."""
    return scoped(_CURRENT, executor)


def executor_for(jobs: int) -> Executor:
    """The local executor `--jobs` asks for: serial for 1."""
    return SerialExecutor() if jobs == 1 else LocalExecutor(jobs)


# --------------------------------------------------------------------------- builds


def _contained(function: Callable[..., T], args: tuple[Any, ...]) -> tuple[T | None, QuantError | None]:
    """A build-like function whose failures belong to its variant: returned as a value, never raised."""
    try:
        return function(*args), None
    except QuantError as error:
        return None, error
    except Exception as error:  # a quantizer bug: reported on the variant, with where it happened
        if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:  # disk full, read-only: the whole run stops (exit 2)
            return None, OutputError(f"cannot write: {error.strerror}", file=str(error.filename or "the run folder"), field="--out")
        tail = " | ".join(line.strip() for line in traceback.format_exc().strip().splitlines()[-3:])
        return None, BuildError(f"{type(error).__name__}: {str(error)[:300]} ({tail})")


def run_isolated(function: Callable[..., T], *args: Any) -> tuple[T, Stats]:
    """Run a top-level function as a unit of the current executor; returns its result and {seconds, peak_rss_mb}.

    Bad input (InputError) re-raises as-is (exit 2); any other failure becomes a BuildError."""
    (result, error), stats = current().call(_contained, function, args)
    if error is not None:
        raise error
    return result, stats  # type: ignore[return-value]


def _build(options: Any, context: BuildContext, out_path: Path) -> BuildResult:
    from quant.methods.base import builder_for

    return builder_for(options)(options, context, out_path)


def build_isolated(options: Any, context: BuildContext, out_path: Path) -> BuildResult:
    """Run a method's build as a unit (a child process) and record its time and peak memory.

    The child is a fresh interpreter: `context.log` must be a top-level function (it is pickled)."""
    result, stats = run_isolated(_build, options, context, out_path)
    result.details.update({"build_seconds": stats["seconds"], "build_peak_rss_mb": stats["peak_rss_mb"]})
    return result
