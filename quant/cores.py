"""The cores of this machine, shared by the units of work `--jobs N` runs at once.

Three things change when units share the cores, and none changes a result:

* an *inference* unit (the FP32 reference, an evaluation: optimised onnxruntime graphs, which compute each
  output element the same way whatever the thread count) gets its share of the cores,
  `inference_threads(wanted, jobs)`, instead of the recipe's bench.threads each: two 2-thread sessions on 2
  cores only take turns; two 1-thread sessions both run. Calibration keeps bench.threads: it runs the graph
  unoptimised, where onnxruntime's last bits can depend on the count (measured on rec: up to 8.5e-6 apart at 1 and 2 threads);
* a unit's process started by a local executor with several jobs does not let onnxruntime's idle threads spin
  (`share_cores`, its initializer): a spinning thread burns the core another unit's thread is waiting for;
* a large evaluation goes in shards (`local_shard_samples` each, quant.shards), each a unit: both cores work on
  it, and a benchmark waiting for the machine waits for a shard, not a whole evaluation.

The latency benchmark runs alone, in the driver, as before: with the recipe's threads, spinning allowed.
"""

from __future__ import annotations

import math
import os
from typing import Any

MIN_LOCAL_SHARD = 8  # samples: fewer do not pay for a shard's own session
SHARDS_PER_JOB = 3  # several shards per job: the jobs stay busy to the end, and a waiting benchmark waits for less
SPINNING_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")
_shared = False  # set in a unit's own process only (its initializer): never in the driver, which runs the benchmarks


def cores() -> int:
    """The cores this process may run on (its affinity: a container or taskset may give fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def inference_threads(wanted: int, jobs: int) -> int:
    """onnxruntime threads of an inference unit when `jobs` units run at once: at most `wanted`, at most its share of the cores."""
    return wanted if jobs <= 1 else max(1, min(wanted, cores() // jobs))


def local_shard_samples(count: int, jobs: int) -> int:
    """Samples a shard of an evaluation of `count` samples under `jobs` jobs (quant.shards): a few shards per job,
    none smaller than MIN_LOCAL_SHARD."""
    return max(MIN_LOCAL_SHARD, math.ceil(count / (SHARDS_PER_JOB * jobs)))


def windows(count: int, shard_samples: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard of `count` samples, `shard_samples` a shard (the last one shorter)."""
    return [(start, min(start + shard_samples, count)) for start in range(0, count, shard_samples)]


def share_cores() -> None:
    """Initializer of a unit's process under --jobs N > 1: its sessions do not spin while idle."""
    global _shared
    _shared = True


def sharing() -> bool:
    return _shared


def no_spinning_if_shared(options: Any) -> Any:
    """Turn spinning off in these onnxruntime SessionOptions when this process shares the cores; returns them."""
    if _shared:
        for key in SPINNING_KEYS:
            options.add_session_config_entry(key, "0")
    return options
