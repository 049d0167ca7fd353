"""One value of a context variable for the span of a `with` block: the run's executor, the run's needs.

A context variable (not a global) so that threads and tasks started inside the block see the value,
and two runs in one process (tests) do not see each other's.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def scoped(variable: contextvars.ContextVar[T | None], value: T) -> Iterator[T]:
    """Set `variable` to `value` inside the block, and back to what it was after it (even on an error)."""
    token = variable.set(value)
    try:
        yield value
    finally:
        variable.reset(token)
