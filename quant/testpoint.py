"""A test hook for crash-safety tests: stop the run at a named point so a test can kill it there.

With QUANT_TEST_PAUSE_AT=<point> (reference, calibration, evaluation, promotion, family_promotion or registration) the process that
reaches that point writes its pid to the file QUANT_TEST_PAUSE_FILE and sleeps until it is killed
(at most 10 minutes, then it carries on). With QUANT_TEST_FAIL_AT=<point> the process raises an
unexpected exception there instead: a stand-in for a bug, so tests can check that a bug exits 3 and
leaves nothing half-done. With QUANT_TEST_DIE_ONCE_AT=<point> the first process that reaches it creates
the file QUANT_TEST_DIE_ONCE_FILE and kills itself (SIGKILL: a worker lost mid-build); a process that finds
the file carries on, so a retried unit completes. Without the variables this is three dictionary lookups.
"""

from __future__ import annotations

import os
import signal
import time


class InjectedFailure(RuntimeError):
    """Raised at a test point on request; deliberately not a QuantError, so it reaches the CLI as a bug would."""


def pause_point(point: str) -> None:
    """Called where a crash must leave nothing half-done: inside the FP32 reference run, inside
    calibration, inside the evaluation of a variant, and in promotion with the release staged
    but not yet renamed into place."""
    if os.environ.get("QUANT_TEST_FAIL_AT") == point:
        raise InjectedFailure(f"QUANT_TEST_FAIL_AT={point}")
    if os.environ.get("QUANT_TEST_DIE_ONCE_AT") == point:
        try:
            with open(os.environ.get("QUANT_TEST_DIE_ONCE_FILE", f"quant-died-at-{point}"), "x", encoding="utf-8") as handle:
                handle.write(str(os.getpid()))
        except FileExistsError:
            pass  # died here once already: this is the retry
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("QUANT_TEST_PAUSE_AT") != point:
        return
    marker = os.environ.get("QUANT_TEST_PAUSE_FILE", f"quant-paused-at-{point}")
    with open(marker + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.1)
