"""`--jobs N`: builds and evaluations of different variants and recipes run side by side, a large evaluation in
shards, latency alone, and the models, verdicts and metrics are exactly those of the serial run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from quant.executor import LocalExecutor, SerialExecutor
from tests.conftest import base_recipe, run_cli, write_recipe
from tests.test_determinism import _normalise


def _wait_for_each_other(mine: Path, theirs: Path, timeout: float) -> float:
    """A unit that finishes only if the other one runs at the same time: it announces itself and waits for the other."""
    mine.write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not theirs.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{theirs.name} never appeared: the units did not run at the same time")
        time.sleep(0.02)
    return time.time()


def _span(seconds: float) -> tuple[float, float]:
    """A unit that takes `seconds`: when it started and ended, as its own process saw it."""
    started = time.time()
    time.sleep(seconds)
    return started, time.time()


def _marked_span(seconds: float, marker: Path) -> tuple[float, float]:
    """`_span`, leaving `marker` behind as it starts."""
    marker.touch()
    return _span(seconds)


def test_two_jobs_run_two_units_at_once_and_a_benchmark_alone(tmp_path: Path) -> None:
    executor = LocalExecutor(2)
    a, b = tmp_path / "a", tmp_path / "b"
    calls = [lambda: executor.call(_wait_for_each_other, a, b, 60.0), lambda: executor.call(_wait_for_each_other, b, a, 60.0)]
    (done_a, stats_a), (done_b, _) = executor.each(calls)
    assert abs(done_a - done_b) < 30 and stats_a["seconds"] >= 0 and stats_a["peak_rss_mb"] > 0

    # A benchmark waits until no unit runs or is asked for (the work that is ready goes first: the cores do not drain
    # for it), and a unit asked for while it runs starts only after it.
    spans: dict[str, tuple[float, float]] = {}
    marker = tmp_path / "benchmark-started"

    def unit(name: str, delay: float) -> None:
        time.sleep(delay)
        spans[name] = executor.call(_span, 1.0)[0]

    def bench() -> None:
        time.sleep(0.5)  # the first unit is under way by now
        spans["bench"] = executor.alone(_marked_span, 2.0, marker)

    def during_the_benchmark() -> None:
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        spans["third"] = executor.call(_span, 0.0)[0]

    executor.each([lambda: unit("first", 0.0), bench, lambda: unit("second", 1.0), during_the_benchmark])
    assert max(spans["first"][1], spans["second"][1]) <= spans["bench"][0], spans  # asked for after it, run before it
    assert spans["bench"][1] <= spans["third"][0], spans


def _sharing_the_cores() -> bool:
    from quant.cores import sharing

    return sharing()


def test_units_beside_other_units_share_the_cores_and_a_serial_unit_does_not() -> None:
    """Under several jobs a unit's process lets no idle onnxruntime thread spin and an inference unit takes its share of
    the cores; one job at a time (and the driver, which runs the benchmarks) keeps the recipe's threads, spinning."""
    from quant.cores import cores, sharing

    assert LocalExecutor(2).call(_sharing_the_cores)[0] is True
    assert SerialExecutor().call(_sharing_the_cores)[0] is False and sharing() is False
    assert LocalExecutor(2).inference_threads(4) == max(1, min(4, cores() // 2)) and SerialExecutor().inference_threads(4) == 4


def test_two_jobs_fill_windows_of_samples_side_by_side_and_one_job_fills_them_whole(tmp_path: Path) -> None:
    """The FP32 reference's windows (in_windows): 10 samples under 2 jobs are two windows, filled at the same time."""
    filled: list[tuple[int, int]] = []

    def fill(start: int, stop: int) -> None:
        filled.append((start, stop))
        if (start, stop) != (0, 10):
            mine, theirs = (tmp_path / f"w{start}", tmp_path / f"w{8 - start}")
            _wait_for_each_other(mine, theirs, 60.0)

    LocalExecutor(2).in_windows(fill, 10)
    assert sorted(filled) == [(0, 8), (8, 10)]
    filled.clear()
    SerialExecutor().in_windows(fill, 10)
    LocalExecutor(1).in_windows(fill, 10)
    assert filled == [(0, 10), (0, 10)]


def test_one_job_runs_units_one_after_another(tmp_path: Path) -> None:
    with pytest.raises(TimeoutError):
        SerialExecutor().call(_wait_for_each_other, tmp_path / "a", tmp_path / "b", 1.0)


def _recipes(workspace: dict[str, Path], folder: Path) -> list[str]:
    """Two recipes (in `folder`, releasing into `folder`/releases): one whose variants pass, one whose variant fails."""
    folder.mkdir()
    variants = {
        "fp16": {"method": "fp16"},
        "qdq-entropy": {"method": "static_int8", "format": "QDQ", "calibrate": "entropy"},
    }
    gates = [{"metric": "cosine", "min": 0.9}, {"metric": "nonfinite", "max": 0}, {"metric": "latency_ratio", "max": 1000}]
    first = base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants=variants, gates=gates)
    second = {**first, "name": "tiny-two", "variants": {"qop": {"method": "static_int8", "format": "QOperator"}}}
    second["gates"] = [{"metric": "cosine", "min": 0.9999999}]  # fails: verdicts other than a pass must match too
    paths = [write_recipe(folder, first, "one.yaml"), write_recipe(folder, second, "two.yaml")]
    return [arg for path in paths for arg in ("--recipe", str(path))]


def test_two_jobs_give_the_serial_runs_models_verdicts_and_metrics(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    serial, parallel = root / "serial", root / "parallel"
    done = [
        run_cli(*_recipes(workspace, serial), "--out", str(serial / "run"), "--quiet", cwd=root),
        run_cli(*_recipes(workspace, parallel), "--out", str(parallel / "run"), "--quiet", "--jobs", "2", cwd=root),
    ]
    assert [d.returncode for d in done] == [1, 1], done[0].stderr + done[1].stderr  # tiny-two's gate fails
    for out in (d.stdout for d in done):  # the summaries in the order of the recipes, however they finished
        assert 0 <= out.index("## quant: tiny\n") < out.index("## quant: tiny-two\n")
    for name, exit_code in (("tiny", 0), ("tiny-two", 1)):
        built = sorted(p.name for p in (serial / "run" / name / "variants").glob("*.onnx"))
        assert built == sorted(p.name for p in (parallel / "run" / name / "variants").glob("*.onnx")) and built
        for model in built:
            a = (serial / "run" / name / "variants" / model).read_bytes()
            assert a == (parallel / "run" / name / "variants" / model).read_bytes(), f"{name}/{model} differs with --jobs 2"
        results = [json.loads((folder / "run" / name / "results.json").read_text()) for folder in (serial, parallel)]
        assert [r["exit_code"] for r in results] == [exit_code, exit_code]
        stages = [r.pop("stages") for r in results]  # when each stage ran differs, of course
        assert _normalise(results[0], str(serial)) == _normalise(results[1], str(parallel))
        assert set(_kinds(stages[0])) == set(_kinds(stages[1]))
        # Under --jobs 2 each evaluation of the 10 samples went in shards (8 + 2), each recorded; serially it is one piece.
        evaluations = [[s for s in kinds if s[0] == "evaluation"] for kinds in map(_kinds, stages)]
        assert len(evaluations[1]) == 2 * len(evaluations[0]) > 0, evaluations


def _kinds(stages: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(s["stage"], s["variant"] or "", s["split"] or "") for s in stages]


def test_calibration_ranges_are_cached_per_thread_count(workspace: dict[str, Path]) -> None:
    """Each unit runs with the recipe's thread count, never --jobs': ranges computed with one count are never
    reused for another (an unoptimised Conv can differ in its last bits), and with the same count they are."""
    from quant.calibration.ranges import calibration_ranges
    from quant.model import file_sha256
    from tests.test_calibration_cache import INPUTS, _source

    model, cache = workspace["model"], workspace["root"] / "cache"

    def ranges(threads: int | None) -> Any:
        settings = {"method": "minmax", "percentile": 99.999, "op_types": None}
        return calibration_ranges(
            model, file_sha256(model), _source(workspace["calib"]), INPUTS, cache_dir=cache, log=lambda _: None, threads=threads, **settings
        )

    one, two, one_again, default = ranges(1), ranges(2), ranges(1), ranges(None)
    assert not one.cache_hit and not two.cache_hit and one_again.cache_hit and not default.cache_hit
    assert len({one.key, two.key, default.key}) == 3 and one_again.key == one.key
    assert json.loads(one.cache_file.read_text()).keys() == json.loads(two.cache_file.read_text()).keys()
