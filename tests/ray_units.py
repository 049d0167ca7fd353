"""Units of work the Ray tests hand to the executor. A Ray worker imports them by name, so they live in a module
of their own (the test fixture puts the repository on the workers' PYTHONPATH)."""

from __future__ import annotations

import os
import time


def node_name() -> str | None:
    """The name the test gave the node this unit runs on (an environment variable of that node's raylet)."""
    return os.environ.get("QUANT_RAY_TEST_NODE")


def hog_memory(megabytes: int) -> None:
    """Take memory 100 MB at a time, each page written (really resident), until `megabytes` or until killed."""
    held = []
    for _ in range(megabytes // 100):
        held.append(bytearray(b"\x01" * (100 * 1024 * 1024)))
        time.sleep(0.02)
