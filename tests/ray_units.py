"""What the Ray tests run on a cluster, out of the pytest process (which never becomes a Ray driver: a driver
outlives its cluster badly). The units are imported by name by the workers (the test fixture puts the
repository on their PYTHONPATH); `python -m tests.ray_units ADDRESS COMMAND [ARG]` is a driver that prints
what it found as JSON."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

BENCH_NODE = {"avx512_vnni": 1.0}
TIGHT_NODE = {"tight_memory": 1.0}


def node_name() -> str | None:
    """The name the test gave the node this unit runs on (an environment variable of that node's raylet)."""
    return os.environ.get("QUANT_RAY_TEST_NODE")


def hog_memory(megabytes: int) -> None:
    """Take memory 100 MB at a time, each page written (really resident), until `megabytes` or until killed."""
    held = []
    for _ in range(megabytes // 100):
        held.append(bytearray(b"\x01" * (100 * 1024 * 1024)))
        time.sleep(0.02)


def stamp(seconds: float) -> tuple[float, float]:
    """Sleep `seconds`; when this unit started and ended (wall clock: the test's nodes share one machine's clock)."""
    started = time.time()
    time.sleep(seconds)
    return started, time.time()


def main(address: str, command: str, argument: str = "") -> dict[str, object]:
    from ray._private import state as ray_state

    from quant.errors import BuildError, InputError
    from quant.executor import using
    from quant.needs import Needs, declaring
    from quant.ray_executor import RayExecutor
    from tests.ray_units import hog_memory, node_name  # by their module's name, not __main__'s: the workers import them

    executor = RayExecutor(address)
    with using(executor):
        if command == "placement":  # three benchmarks; checks of a model file (given) and of a unit no node can hold
            with declaring(Needs(bench_resources=BENCH_NODE)):
                nodes = [executor.alone(node_name) for _ in range(3)]
            refused = []
            for needs, places in ((Needs(), {"model.path": Path(argument)}), (Needs(memory_mb=10**9), {})):
                try:
                    executor.check(needs, places)
                    refused.append(None)
                except InputError as error:
                    refused.append(error.field)
            return {"nodes": nodes, "refused_fields": refused}
        if command == "held":  # a unit submitted while a benchmark holds its node starts after it, not beside it
            import threading

            from tests.ray_units import stamp

            with declaring(Needs(bench_resources=BENCH_NODE)):
                spans: dict[str, tuple[float, float]] = {}
                benchmark = threading.Thread(target=lambda: spans.update(benchmark=executor.alone(stamp, 4.0)))
                benchmark.start()
                time.sleep(1.0)  # the benchmark is submitted (or running) by now
                spans["unit"], _ = executor.call(stamp, 0.0)
                benchmark.join()
            return spans
        if command == "oom":
            with declaring(Needs(bench_resources=TIGHT_NODE)):
                try:
                    executor.alone(hog_memory, int(argument))
                except BuildError as error:
                    return {"error": str(error)}
            return {"error": None}
        if command == "target":  # the CPU facts that decide 8-bit weights: read on the bench node, not in this driver
            from quant.machine import eight_bit_weights_unsafe
            from quant.ray_executor import alive_nodes

            with declaring(Needs(bench_resources=BENCH_NODE)):
                facts = executor.target_cpu()
            bench = next(n["NodeID"] for n in alive_nodes() if "avx512_vnni" in n["Resources"])
            return {"source": facts.source, "bench_node": bench[:12], "unsafe": eight_bit_weights_unsafe("uint8", "int8", facts), "x86": facts.x86}
        if command == "actors":
            return {"classes": [actor["ActorClassName"] for actor in ray_state.actors().values()]}
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
