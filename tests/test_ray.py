"""`--executor ray` against a real Ray, no mock: a local cluster (the one the command starts on this machine's
cores when given no address) and a cluster of several nodes on this machine (`ray.cluster_utils.Cluster`, as Ray
tests itself: a head, a node with the custom resource a recipe names for its benchmark, and for one test a node
whose memory monitor is set to trip). The models are the serial run's, byte for byte, and so are the verdicts,
also when a build's process is killed mid-build; a benchmark runs on the named node; a unit that runs out of
memory fails its variant; a cluster without the named node is bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import ray_units
from tests.conftest import REPO, base_recipe, make_workspace, run_cli, write_recipe
from tests.test_crash_safety import _check_releases, _kill_at
from tests.test_determinism import _normalise

ray = pytest.importorskip("ray", reason="the Ray executor's tests need the extra: pip install -e '.[ray]'")
from ray.cluster_utils import Cluster

GATES = [{"metric": "cosine", "min": 0.9}, {"metric": "nonfinite", "max": 0}, {"metric": "latency_ratio", "max": 1000}]
BENCH_NODE = ray_units.BENCH_NODE
AVX2_ONLY = "fpu sse2 avx avx2 fma"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_workspace(tmp_path_factory.mktemp("ray"))


def _run(tiny: dict[str, Path], name: str, *args: str, env: dict[str, str] | None = None) -> Path:
    """The command on a recipe with an FP16 and a static INT8 variant, in its own folder (releasing there)."""
    folder = tiny["root"] / name
    folder.mkdir()
    variants = {"fp16": {"method": "fp16"}, "qdq": {"method": "static_int8", "format": "QDQ"}}
    content = base_recipe(tiny["model"], tiny["calib"], tiny["eval"], variants=variants, gates=GATES)
    path = write_recipe(folder, content)
    done = run_cli("--recipe", str(path), "--out", str(folder / "run"), *args, cwd=folder, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return folder


@pytest.fixture(scope="module")
def serial(tiny: dict[str, Path]) -> Path:
    return _run(tiny, "serial", "--quiet")


def _same_models_and_verdicts(serial: Path, other: Path) -> None:
    built = sorted(p.name for p in (serial / "run" / "variants").glob("*.onnx"))
    assert built == ["fp16.onnx", "qdq.onnx"] == sorted(p.name for p in (other / "run" / "variants").glob("*.onnx"))
    for model in built:
        assert (serial / "run" / "variants" / model).read_bytes() == (other / "run" / "variants" / model).read_bytes(), model
    results = [json.loads((folder / "run" / "results.json").read_text()) for folder in (serial, other)]
    for key in ("variants", "verdict", "exit_code", "promotion"):
        assert _normalise(results[0][key], str(serial)) == _normalise(results[1][key], str(other)), key
    # Promotion stayed in the driver: the same release, laid out the same way.
    releases = [sorted(p.relative_to(folder / "releases").as_posix() for p in (folder / "releases").rglob("*")) for folder in (serial, other)]
    assert releases[0] == releases[1] and "tiny/v1/qdq.onnx" in releases[0]


def test_on_a_local_cluster_a_build_killed_once_runs_again_and_gives_the_serial_models_and_verdicts(tiny: dict[str, Path], serial: Path) -> None:
    died = tiny["root"] / "died-once"
    environment = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}  # the command starts its own cluster
    # The static INT8 build kills its own process one sample into calibration, the first time only.
    environment |= {"QUANT_TEST_DIE_ONCE_AT": "calibration", "QUANT_TEST_DIE_ONCE_FILE": str(died)}
    on_ray = _run(tiny, "local-ray", "--executor", "ray", env=environment)
    assert died.is_file(), "no build was killed: the test tested nothing"
    _same_models_and_verdicts(serial, on_ray)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A head and a node with the benchmark's custom resource, each named by its raylet's environment; this process
    starts them but never connects as a driver (the commands and `tests.ray_units` do). The bench node reads its CPU
    flags from a file (QUANT_TEST_CPUINFO): an AVX2 CPU without VNNI, whatever this machine is."""
    cpuinfo = tmp_path_factory.mktemp("bench-node") / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {AVX2_ONLY}\n")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved]))  # the workers import tests.ray_units
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "env_vars": {"QUANT_RAY_TEST_NODE": "head"},
                        "_system_config": {"task_oom_retries": 1}},
    )  # fmt: skip
    try:
        cluster.add_node(num_cpus=1, resources=BENCH_NODE, env_vars={"QUANT_RAY_TEST_NODE": "bench", "QUANT_TEST_CPUINFO": str(cpuinfo)})
        cluster.wait_for_nodes(timeout=120)
        yield cluster
    finally:
        cluster.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _driver(cluster: Cluster, command: str, argument: str = "") -> dict[str, Any]:
    """`tests.ray_units` as a driver of the cluster, in its own process."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.ray_units", cluster.address, command, argument], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_on_a_two_node_cluster_evaluations_in_shards_give_the_serial_models_and_verdicts(
    tiny: dict[str, Path], serial: Path, cluster: Cluster
) -> None:
    folder = tiny["root"] / "cluster"
    folder.mkdir()
    variants = {"fp16": {"method": "fp16"}, "qdq": {"method": "static_int8", "format": "QDQ"}}
    content = base_recipe(tiny["model"], tiny["calib"], tiny["eval"], variants=variants, gates=GATES)
    content["bench"]["resources"] = BENCH_NODE
    path = write_recipe(folder, content)
    args = ["--executor", "ray", "--ray-address", cluster.address, "--ray-shard-samples", "4"]  # 10 evaluation samples: 3 shards each
    done = run_cli("--recipe", str(path), "--out", str(folder / "run"), *args, "--quiet", cwd=folder)
    assert done.returncode == 0, done.stderr[-4000:]
    # Each variant's evaluation went through Ray Data: a pool of ShardEvaluator actors, one session each.
    classes = _driver(cluster, "actors")["classes"]
    assert sum("ShardEvaluator" in name for name in classes) >= 2, classes
    _same_models_and_verdicts(serial, folder)


def test_benchmarks_run_on_the_node_with_the_named_resource(cluster: Cluster) -> None:
    found = _driver(cluster, "placement", str(REPO / "no-such-model.onnx"))
    assert found["nodes"] == ["bench"] * 3
    # No node sees a model file that is not there; none holds a unit declaring 10**9 MB (tasks.memory_mb).
    assert found["refused_fields"] == ["model.path", "tasks.memory_mb"]


def test_a_unit_submitted_while_a_benchmark_holds_its_node_waits_for_it(cluster: Cluster) -> None:
    """Ray does not serve tasks first come, first served: without holding units back, a benchmark asking for a whole
    node waited behind later units, and here the unit would run on the head beside the benchmark."""
    spans = _driver(cluster, "held")
    assert spans["unit"][0] >= spans["benchmark"][1], spans


def test_the_bench_nodes_cpu_decides_8_bit_weights_and_is_named(cluster: Cluster) -> None:
    """8-bit weights are safe only on a CPU with VNNI: with Ray the CPU that counts is the bench node's (here: AVX2 only,
    from its QUANT_TEST_CPUINFO), read there, never this driver's; the facts name the node they came from."""
    found = _driver(cluster, "target")
    assert f"Ray node {found['bench_node']}" in found["source"] and "cpuinfo" in found["source"], found
    if found["x86"]:
        assert "without VNNI" in (found["unsafe"] or ""), found


def test_a_cluster_without_the_named_benchmark_node_is_bad_input(tiny: dict[str, Path], cluster: Cluster) -> None:
    folder = tiny["root"] / "no-such-node"
    folder.mkdir()
    content = base_recipe(tiny["model"], tiny["calib"], tiny["eval"], gates=GATES)
    content["bench"]["resources"] = {"gpu_a100": 1}
    path = write_recipe(folder, content)
    done = run_cli("--recipe", str(path), "--out", str(folder / "run"), "--executor", "ray", "--ray-address", cluster.address, cwd=folder)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "field 'bench.resources'" in done.stderr and "gpu_a100" in done.stderr
    assert not (folder / "run" / "variants").exists() and not (folder / "releases").exists()


def test_a_driver_killed_while_promoting_leaves_no_release_and_the_cluster_serves_on(tiny: dict[str, Path], cluster: Cluster) -> None:
    folder = tiny["root"] / "driver-killed"
    folder.mkdir()
    path = write_recipe(folder, base_recipe(tiny["model"], tiny["calib"], tiny["eval"], gates=GATES))
    args = ["--recipe", str(path), "--out", str(folder / "run"), "--executor", "ray", "--ray-address", cluster.address, "--quiet"]
    paused = _kill_at("promotion", args, folder)  # the driver, paused with the release staged, SIGKILLed
    assert _check_releases(folder / "releases" / "tiny", []) == [f".staging-v1-{paused}"]  # staged, never a version
    assert (folder / "run" / "variants" / "fp16.onnx").is_file()  # the workers had built it
    assert _driver(cluster, "placement", str(REPO / "pyproject.toml")) == {"nodes": ["bench"] * 3, "refused_fields": [None, "tasks.memory_mb"]}


def _memory_in_use() -> int:
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = {name: int(value.split()[0]) for name, value in meminfo.items() if name in ("MemTotal", "MemAvailable")}
    return (kib["MemTotal"] - kib["MemAvailable"]) * 1024


def test_a_unit_that_runs_out_of_memory_fails_as_a_build_does(cluster: Cluster) -> None:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    threshold = (_memory_in_use() + 1024**3) / total  # this node's memory monitor kills a worker 1 GB above today's use
    tight = cluster.add_node(
        num_cpus=0, resources=ray_units.TIGHT_NODE,  # nothing but this test's unit lands there
        env_vars={"QUANT_RAY_TEST_NODE": "tight", "RAY_memory_usage_threshold": f"{threshold:.4f}", "RAY_memory_monitor_refresh_ms": "100"},
    )  # fmt: skip
    try:
        cluster.wait_for_nodes(timeout=120)
        error = _driver(cluster, "oom", "4000")["error"]
        assert error is not None and "out of memory" in error, error
    finally:
        cluster.remove_node(tight)


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_address_where_no_cluster_answers_is_bad_input_at_once(tiny: dict[str, Path]) -> None:
    """ray.init retries an unreachable address for minutes; the command refuses it in seconds, naming where it came from."""
    folder = tiny["root"] / "unreachable"
    folder.mkdir()
    path = write_recipe(folder, base_recipe(tiny["model"], tiny["calib"], tiny["eval"], gates=GATES))
    address = f"127.0.0.1:{_closed_port()}"
    command = ("--recipe", str(path), "--out", str(folder / "a"), "--executor", "ray")
    flag = run_cli(*command, "--ray-address", address, cwd=folder, timeout=60)
    environment = run_cli(*command, cwd=folder, env={"RAY_ADDRESS": address}, timeout=60)
    for done, field in ((flag, "--ray-address"), (environment, "RAY_ADDRESS")):
        assert done.returncode == 2, done.stderr[-3000:]
        message = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(message) == 1 and f"field '{field}'" in message[0] and address in message[0], done.stderr[-3000:]
    assert not (folder / "a" / "variants").exists() and not (folder / "releases").exists()


def test_a_family_run_declares_its_units_needs_to_the_cluster(tmp_path: Path, cluster: Cluster) -> None:
    """An encoder–decoder family's builds declare bench.threads CPUs and tasks.memory_mb, as a one-model run's do: on
    this cluster of 1-CPU nodes, a family whose units need 2 CPUs is refused before anything is built."""
    import numpy as np

    from tests.seq2seq_family import DIM, END, START, write_family

    write_family(tmp_path / "model")
    np.savez(tmp_path / "eval.npz", pixel_values=np.stack([np.full((3, DIM), v, dtype=np.float32) for v in (1.0, 3.0)]))
    recipe = {
        "name": "tiny-family",
        "family": {"folder": "model", "generation": {"vocab": None, "config": None, "start_token": START, "end_token": END, "max_new_tokens": 24}},
        "evaluation": {"source": {"npz": str(tmp_path / "eval.npz")}},
        "variants": {"int8-decoders": {"parts": {"decoders": {"method": "weight_only", "bits": 8}}}},
        "bench": {"threads": 2},
        "tasks": {"memory_mb": 512},
        "promotion": {"to": "releases"},
    }
    write_recipe(tmp_path, recipe)
    done = run_cli("--recipe", "recipe.yaml", "--out", "run", "--executor", "ray", "--ray-address", cluster.address, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "field 'bench.threads'" in done.stderr and "2 CPUs" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "run" / "variants").exists() and not (tmp_path / "releases").exists()
