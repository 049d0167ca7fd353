"""Progress and log lines on stderr (stdout is the summary alone): a live bar in a terminal, a few plain lines in CI logs."""

from __future__ import annotations

import sys
import time
from types import TracebackType


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def log_nothing(message: str) -> None:
    """The log under --quiet (a top-level function: it must pickle into a build's child process)."""


class Progress:
    """Use as `with Progress("calibration", total, quiet) as bar: bar.update(done)`."""

    def __init__(self, label: str, total: int, quiet: bool = False) -> None:
        self.quiet = quiet
        self.label = label
        self.total = max(total, 1)
        self.tty = sys.stderr.isatty()
        self.started = time.perf_counter()
        self._last_decile = -1

    def update(self, done: int) -> None:
        if self.quiet:
            return
        if self.tty:
            filled = int(30 * done / self.total)
            sys.stderr.write(f"\r{self.label}: [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}")
            sys.stderr.flush()
            return
        decile = int(10 * done / self.total)
        if decile != self._last_decile and (decile % 5 == 0 or done == self.total):
            self._last_decile = decile
            print(f"{self.label}: {done}/{self.total} ({time.perf_counter() - self.started:.1f} s)", file=sys.stderr, flush=True)

    def __enter__(self) -> Progress:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")
            sys.stderr.flush()
