"""The Ray executor (`quantize --executor ray [--ray-address ADDR]`; the optional extra quant[ray]).

Each unit of work (a variant's build, an evaluation, a ranking, a scan) runs as a Ray task that
declares the recipe's CPUs (bench.threads, the onnxruntime threads it uses) and memory
(tasks.memory_mb), in a fresh child process of a Ray worker, as without Ray (a leak or crash stays in
it, its peak memory is its own). A unit whose process or worker dies (killed, its node lost) runs
again, up to `retries` times; the unit only writes paths it is given, so a retry gives the same bytes. A unit that still
dies, or that Ray's memory monitor kills (OutOfMemoryError), becomes a BuildError on its variant, as
a crashed build does without Ray. An evaluation (optimised graphs: the same outputs at any thread count) is
throughput work: each unit or shard declares one CPU and runs one onnxruntime thread, so a node runs as many side by
side as it has cores; one of more than `shard_samples` samples runs in shards through Ray Data (quant.ray_evaluate), a
smaller one in a few plain tasks per CPU of the cluster, each in a worker process (no child: no start-up per shard).
A latency benchmark runs on a node that has the recipe's `bench.resources` (the target hardware), taking all of
that node's CPUs, so nothing else runs there meanwhile; it starts once no unit of the run is in flight or queued, and
the driver submits no new unit while it runs. The driver keeps the FP32 reference, the gates and the promotion: the release layout
and the exit codes do not change, and a killed driver leaves no half release (promotion is staged
and renamed, as always).

Every node must reach the run's files at the same paths (the run and cache folders given with --out
and --cache on storage every node mounts, the model and the data) and run the same quant: `check`
asks each node before anything is built. Ray is imported only here, and only when this executor is
used.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from quant import __version__
from quant.compare import OutputComparison
from quant.cores import local_shard_samples, windows
from quant.errors import BuildError, InputError
from quant.executor import LocalExecutor, ProcessLost, Stats, in_fresh_process, run_unit
from quant.machine import CpuFacts, cpu_facts
from quant.needs import Needs, declared
from quant.ray_evaluate import evaluate_in_shards
from quant.shards import Evaluation, as_evaluation, evaluate_window, merged
from quant.stages import unit_ran

T = TypeVar("T")
MB = 1024 * 1024
SHARD_SAMPLES = 1024  # an evaluation of more samples than this runs in shards of this many through Ray Data (below: plain tasks)
RETRIES = 3  # a worker killed mid-unit: its unit runs again, up to this many times
OOM_RETRIES = 1  # a unit Ray's memory monitor killed runs once more (Ray's default: forever), then fails its variant
EXECUTOR_FIELD = "--executor ray"
EVALUATION_THREADS = 1  # an evaluation (or a shard of one) declares this many CPUs and uses as many onnxruntime threads
CONNECT_SECONDS = 5.0  # an address that does not answer within this is refused (exit 2), not retried for minutes


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("Ray is not installed: pip install 'quant[ray]'", field=EXECUTOR_FIELD) from None
    return ray


def connect(address: str | None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS); without either, start a local one on this machine's cores.
    True when the cluster is that local one (its nodes see this machine's files by construction).

    A driver that is already connected (a test's cluster, a notebook) keeps its connection."""
    ray = _ray()
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS")
    field = "--ray-address" if address else "RAY_ADDRESS"
    if target:
        _check_reachable(target, field)
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    try:
        if target:
            ray.init(address=target, **quiet)
        else:  # address="local": never join a cluster an earlier `ray start` left on this machine by accident
            ray.init(address="local", _system_config={"task_oom_retries": OOM_RETRIES}, **quiet)
    except (ConnectionError, ValueError) as error:
        raise InputError(f"cannot reach the Ray cluster: {_first_line(error)}", file=target, field=field) from None
    return not target


def _check_reachable(target: str, field: str, timeout: float = CONNECT_SECONDS) -> None:
    """Refuse an address no Ray head listens at, quickly: ray.init retries an unreachable one for minutes.

    `auto` (the cluster `ray start` left on this machine) is Ray's to find; anything else is HOST:PORT,
    or ray://HOST:PORT for Ray Client."""
    if target == "auto":
        return
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"{target!r} is not a Ray address: give HOST:PORT of the head node (e.g. 10.0.0.5:6379)", field=field)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        reason = f"no answer within {timeout:g} s" if isinstance(error, TimeoutError) else (error.strerror or type(error).__name__)
        raise InputError(f"no Ray cluster answers at {target} ({reason}): is its head node up, and the port open?",
                         field=field) from None  # fmt: skip


@cache
def _remote_in_worker() -> Any:
    # An evaluation (or a shard of one) in the Ray worker itself, as --jobs runs it in its own process: no child to
    # spawn and no onnxruntime import per unit (a second or more each); the reused worker keeps onnxruntime loaded.
    return _ray().remote(run_unit)


@cache
def _remote_unit() -> Any:
    # In a fresh child of the Ray worker, as without Ray: a leak or a crash stays in it, its peak memory is its own,
    # and the worker (which never loads onnxruntime) is reused.
    return _ray().remote(in_fresh_process)


def _forwarded_environment() -> dict[str, Any] | None:
    """The test hooks (quant.testpoint) set in the driver's environment reach the units' workers too."""
    hooks = {name: value for name, value in os.environ.items() if name.startswith("QUANT_TEST_")}
    return {"env_vars": hooks} if hooks else None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


class RayExecutor(LocalExecutor):
    """Units as Ray tasks; driver-side work (the FP32 reference) one at a time in this process, and a benchmark
    waits for it (`slot`, `each` and the waiting in `alone` are the local executor's)."""

    def __init__(self, address: str | None = None, retries: int = RETRIES, shard_samples: int = SHARD_SAMPLES) -> None:
        super().__init__(1)
        self._in_flight = 0  # units submitted to the cluster and not back yet
        self.local = connect(address)
        self.retries = retries
        self.shard_samples = shard_samples
        # One Ray Data evaluation at a time from this driver: its actor pool spreads over the whole cluster anyway,
        # and two at once can each wait for CPUs the other's actors hold (seen: two pools on a 2-CPU cluster, stuck).
        self._datasets = threading.Lock()
        self._targets: dict[tuple[tuple[str, float], ...], CpuFacts] = {}  # the bench node's CPU, by bench.resources

    def call(self, unit: Callable[..., T], *args: Any, fresh: bool = True) -> tuple[T, Stats]:
        """`fresh` is ignored: every unit is shipped to the cluster (an evaluation runs in a worker's own process, any other
        unit in a child process of its own)."""
        with self._state:
            self._state.wait_for(lambda: not self._benchmarking)  # Ray serves no queue in order: hold it back here
            self._in_flight += 1
        try:
            return self._on_ray(unit, *args)
        finally:
            with self._state:
                self._in_flight -= 1
                self._state.notify_all()

    def _idle(self) -> bool:
        """No unit in flight on the cluster either: a benchmark then has its node to itself (Ray does not serve tasks
        first come, first served: a task asking for a whole node waited behind later units, 65 s of a 2-CPU run)."""
        return super()._idle() and self._in_flight == 0

    def _on_ray(self, unit: Callable[..., T], *args: Any) -> tuple[T, Stats]:
        needs = declared()
        evaluation = as_evaluation(unit, args)
        if evaluation is not None:  # throughput work: one thread and one CPU a unit, as many side by side as the cluster holds
            args = tuple(evaluation._replace(threads=EVALUATION_THREADS))  # the same outputs at any count (quant.cores)
            needs = replace(needs, cpus=float(EVALUATION_THREADS))
        if self._shardable(unit, args):
            result, stats = self._in_shards(needs, *args)
        elif evaluation is not None:
            result, stats = self._in_task_shards(needs, Evaluation(*args))
        else:
            task = _remote_unit().options(
                num_cpus=needs.cpus, memory=needs.memory_mb * MB, max_retries=self.retries, retry_exceptions=[ProcessLost],
                runtime_env=_forwarded_environment(),
            )  # fmt: skip
            result, stats = self._result(task.remote(unit, *args))
        unit_ran(stats, own_process=True)  # the span (and the peak of its process) go to the open stage of this run
        return result, stats

    def inference_threads(self, wanted: int) -> int:
        """What the unit declares to Ray (bench.threads CPUs): the scheduler keeps the units within each node's cores."""
        return wanted

    def target_cpu(self) -> CpuFacts:
        """Read on a node with the recipe's bench.resources, where latency is measured (once per set of resources):
        the driver may be another machine altogether. Its `source` names the node."""
        wanted = dict(declared().bench_resources)
        key = tuple(sorted(wanted.items()))
        if key not in self._targets:
            ray = _ray()
            ask = ray.remote(node_cpu_facts).options(num_cpus=0, resources=wanted, max_retries=self.retries)
            try:
                self._targets[key] = ray.get(ask.remote())
            except ray.exceptions.RayError as error:
                raise BuildError(f"cannot read the CPU flags of the benchmark node: {_first_line(error)}") from None
        return self._targets[key]

    def _shardable(self, unit: Callable[..., Any], args: tuple[Any, ...]) -> bool:
        """An evaluation of a large stateless split (quant.shards): shards compared apart and merged in order are the whole comparison."""
        evaluation = as_evaluation(unit, args)
        return evaluation is not None and len(evaluation.source) > self.shard_samples

    def _in_shards(self, needs: Needs, *args: Any) -> tuple[dict[str, OutputComparison], Stats]:
        """evaluate_variant through Ray Data: shards of the split on a pool of actors, one session each."""
        with self._datasets:
            started, clock = time.time(), time.perf_counter()
            actors = int(_ray().cluster_resources().get("CPU", 1.0) // max(needs.cpus, 1.0))
            comparisons = evaluate_in_shards(Evaluation(*args), shard_samples=self.shard_samples, memory_mb=needs.memory_mb, actors=actors)
        return comparisons, {"seconds": round(time.perf_counter() - clock, 3), "started": started}

    def _in_task_shards(self, needs: Needs, evaluation: Evaluation) -> tuple[dict[str, OutputComparison], Stats]:
        """An evaluation below the Ray Data size as a few plain tasks per CPU of the cluster (quant.shards), each in a
        worker: Ray Data's actor pool took 10-25 s to start per evaluation of a few hundred samples (measured)."""
        started, clock = time.time(), time.perf_counter()
        cpus = int(_ray().cluster_resources().get("CPU", 1.0))
        task = _remote_in_worker().options(
            num_cpus=needs.cpus, memory=needs.memory_mb * MB, max_retries=self.retries, runtime_env=_forwarded_environment()
        )
        bounds = windows(len(evaluation.source), local_shard_samples(len(evaluation.source), max(cpus, 1)))
        refs = [task.remote(evaluate_window, (evaluation, start, stop)) for start, stop in bounds]
        shards = [self._result(ref)[0] for ref in refs]
        return merged(shards), {"seconds": round(time.perf_counter() - clock, 3), "started": started}

    def alone(self, unit: Callable[..., T], *args: Any) -> T:
        return super().alone(self._on_bench_node, unit, *args)

    def _on_bench_node(self, unit: Callable[..., T], *args: Any) -> T:
        """The unit on a node with the recipe's bench resources, holding all its CPUs: one benchmark at a time there, alone."""
        needs = declared()
        task = _remote_unit().options(
            num_cpus=bench_cpus(needs),
            resources=dict(needs.bench_resources),
            max_retries=self.retries,
            retry_exceptions=[ProcessLost],
            runtime_env=_forwarded_environment(),
        )
        result, _ = self._result(task.remote(unit, *args))
        return result

    def _result(self, ref: Any) -> tuple[T, Stats]:
        exceptions = _ray().exceptions
        try:
            return _ray().get(ref)
        except exceptions.RayTaskError as error:  # the unit raised: the same exception as without Ray
            cause = error.cause
            if isinstance(cause, ProcessLost):
                raise ProcessLost(f"its process died {self.retries + 1} times (killed, or out of memory)") from None
            raise (cause if isinstance(cause, Exception) else BuildError(_first_line(error))) from None
        except exceptions.OutOfMemoryError as error:
            raise BuildError(f"out of memory: Ray's memory monitor stopped it ({_first_line(error)}); declare more with tasks.memory_mb") from None
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.LocalRayletDiedError) as error:
            raise BuildError(f"its Ray worker died {self.retries + 1} times (killed, or out of memory): {_first_line(error)}") from None

    def check(self, needs: Needs, places: Mapping[str, Path]) -> None:
        """Before anything is built: a node can hold a unit and one has the bench resources, and every node
        runs this quant and sees `places` ({field: path}) as this driver does."""
        nodes = alive_nodes()
        enough_cpus = [n for n in nodes if n["Resources"].get("CPU", 0) >= needs.cpus]
        if not any(n["Resources"].get("memory", 0) >= needs.memory_mb * MB for n in enough_cpus):
            what = f"{needs.cpus:g} CPUs and {needs.memory_mb} MB" if enough_cpus else f"{needs.cpus:g} CPUs (the onnxruntime threads of a unit)"
            raise InputError(f"no node of the Ray cluster has {what} for a unit of work", field="tasks.memory_mb" if enough_cpus else "bench.threads")
        bench_cpus(needs)  # a named target no node has is bad input, not a benchmark waiting forever
        if self.local:
            return
        probes = _write_probes({field: path for field, path in places.items() if path.is_dir() and field.startswith("--")})
        try:
            _check_nodes(nodes, places, probes)
        finally:
            for probe, _ in probes.values():
                probe.unlink(missing_ok=True)


def node_cpu_facts() -> CpuFacts:
    """Run on a node: its CPU facts, their source naming the node."""
    facts = cpu_facts()
    ray = _ray()
    node = ray.get_runtime_context().get_node_id()
    return replace(facts, source=f"{facts.source} of Ray node {node[:12]} at {ray.util.get_node_ip_address()}")


def alive_nodes() -> list[dict[str, Any]]:
    return [node for node in _ray().nodes() if node.get("Alive")]


def bench_cpus(needs: Needs) -> float:
    """All the CPUs of the largest node with the bench resources (a benchmark takes such a node whole)."""
    wanted = dict(needs.bench_resources)
    fitting = [n for n in alive_nodes() if all(n["Resources"].get(name, 0) >= amount for name, amount in wanted.items())]
    if not fitting:
        raise InputError(
            f"no node of the Ray cluster has the resources {wanted}: start the node of the target hardware with "
            f"ray start --resources '{{\"{next(iter(wanted))}\": 1}}'",
            field="bench.resources",
        )
    return max(n["Resources"].get("CPU", 0.0) for n in fitting)


def _write_probes(folders: Mapping[str, Path]) -> dict[str, tuple[Path, str]]:
    """A file with a random token in each shared folder: a node that reads the same token sees the same folder."""
    probes = {}
    for field, folder in folders.items():
        token = secrets.token_hex(8)
        probe = folder / f".quant-reach-{token}"
        probe.write_text(token, encoding="ascii")
        probes[field] = (probe, token)
    return probes


def what_this_node_sees(places: Mapping[str, str], probes: Mapping[str, tuple[str, str]]) -> tuple[str, list[str]]:
    """Run on each node: this node's quant version, and which places it does not see as the driver does."""
    missing = [field for field, path in places.items() if not os.path.exists(path)]
    for field, (probe, token) in probes.items():
        try:
            seen = Path(probe).read_text(encoding="ascii")
        except OSError:
            seen = None
        if seen != token and field not in missing:
            missing.append(field)
    return __version__, missing


def _check_nodes(nodes: list[dict[str, Any]], places: Mapping[str, Path], probes: Mapping[str, tuple[Path, str]]) -> None:
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ask = ray.remote(what_this_node_sees)
    paths = {field: str(path) for field, path in places.items()}
    shared = {field: (str(probe), token) for field, (probe, token) in probes.items()}
    pending = {
        f"Ray node {node['NodeID'][:12]} at {node['NodeManagerAddress']}": ask.options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False), max_retries=0
        ).remote(paths, shared)
        for node in nodes
    }
    for address, ref in pending.items():
        try:
            version, missing = ray.get(ref)
        except ray.exceptions.RayError as error:
            message = f"a Ray worker there cannot run quant ({_first_line(error)}): install the same quant[ray] on every node"
            raise InputError(message, file=address, field=EXECUTOR_FIELD) from None
        if version != __version__:
            message = f"the node runs quant {version}, this driver {__version__}: install the same on every node"
            raise InputError(message, file=address, field=EXECUTOR_FIELD)
        if missing:
            where = ", ".join(f"{field} ({places[field]})" for field in missing)
            raise InputError(f"the node does not see {where} as this driver does: put it on storage every node mounts at the same path",
                             file=address, field=missing[0])  # fmt: skip
