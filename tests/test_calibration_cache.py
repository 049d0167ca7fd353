"""The calibration cache: keyed by everything that changes the ranges; reused, and invalidated by any change."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import pytest
import yaml
from PIL import Image

from quant.calibration import ranges as ranges_module
from quant.calibration.ranges import CalibrationRanges, cache_key, calibration_ranges
from quant.calibration.streaming import collect_ranges, quantize_static_default_op_types
from quant.data.feeds import checked_feeds
from quant.data.sources import open_source
from quant.methods.base import BuildContext
from quant.methods.static_int8 import build_static_int8
from quant.model import file_sha256
from quant.recipe.schema import DataSet, ImageInput, StaticInt8Options
from quant.testpoint import InjectedFailure
from tests.conftest import (
    HEIGHT,
    base_recipe,
    run_cli,
    tiny_ctc_model,
    write_images,
    write_recipe,
)

X = {"resize": {"mode": "height", "height": HEIGHT, "min_width": 16}}
INPUTS = {"x": [1, 3, HEIGHT, "W"]}


def _source(folder: Path, x: dict[str, Any] | None = None, samples: int | None = None) -> Any:
    spec = {"x": ImageInput.model_validate(x or X)}
    return open_source(DataSet.model_validate({"source": {"images": str(folder)}, "samples": samples}), Path("."), spec, ["x"], "calibration")


def _ranges(
    model: Path, folder: Path, cache: Path, *, x: dict[str, Any] | None = None, samples: int | None = None, **settings: Any
) -> CalibrationRanges:
    chosen = {"method": "minmax", "percentile": 99.999, "op_types": None, **settings}
    return calibration_ranges(model, file_sha256(model), _source(folder, x, samples), INPUTS, cache_dir=cache, log=lambda _: None, **chosen)


def _feeds(folder: Path) -> list[dict[str, Any]]:
    return [feeds for _, feeds in checked_feeds(_source(folder), INPUTS)]


def _stored(ranges: CalibrationRanges) -> dict[str, Any]:
    """The cached ranges, tensor name -> {lowest, highest} (onnxruntime's calibration-cache format)."""
    return json.loads(ranges.cache_file.read_text())["data"]


@pytest.fixture
def calibration_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = tmp_path / "m.onnx"
    onnx.save(tiny_ctc_model(), str(model))
    images = tmp_path / "calib"
    write_images(images, 6, seed=0)
    return model, images, tmp_path / "cache"


def test_cache_is_reused_and_invalidated_by_data_model_and_settings(calibration_setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = calibration_setup
    started = time.perf_counter()
    first = _ranges(model, images, cache)
    took = time.perf_counter() - started
    assert not first.cache_hit and first.cache_file.is_file()
    second = _ranges(model, images, cache)
    assert second.cache_hit and second.cache_file == first.cache_file
    assert 0 < first.seconds <= took and second.describe()["seconds"] == 0.0  # the time calibrating took; a reused entry costs none
    assert first.describe()["seconds"] == round(first.seconds, 3)  # in results.json to the millisecond, as every time there
    with pytest.raises(dataclasses.FrozenInstanceError):  # the record of an entry on disk is not rewritten after the fact
        second.cache_hit = False  # type: ignore[misc]
    Image.new("RGB", (30, 12), (9, 9, 9)).save(images / "img_002.png")  # one image changes
    changed_data = _ranges(model, images, cache)
    assert not changed_data.cache_hit and changed_data.key != first.key
    assert not _ranges(model, images, cache, method="percentile").cache_hit
    assert not _ranges(model, images, cache, method="percentile", percentile=99.9).cache_hit
    onnx.save(tiny_ctc_model(seed=1), str(model))  # other weights, same graph and tensor names
    assert not _ranges(model, images, cache).cache_hit
    assert len(list((cache / "calibration").glob("*.json"))) == 5


@pytest.mark.parametrize("method", ["minmax", "entropy", "distribution"])
def test_the_percentile_setting_keys_only_the_percentile_method(method: str) -> None:
    """Only `calibrate: percentile` reads it: changing it must not throw away the other methods' ranges."""
    key = functools.partial(cache_key, "model", "data", "feeds", op_types=None)
    assert key(method, 99.999) == key(method, 99.9) and key("percentile", 99.999) != key("percentile", 99.9)


def test_the_thread_count_is_in_the_key_when_pinned() -> None:
    """The last bits of the ranges can depend on onnxruntime's intra-op threads: a pinned count keys its own entry;
    unpinned (onnxruntime's default) keeps the key entries had before the count was pinned."""
    key = functools.partial(cache_key, "model", "data", "feeds", "minmax", 99.999, None)
    assert len({key(None), key(1), key(2)}) == 3 and key(None) == key()


def test_the_percentile_setting_keys_a_method_name_built_at_run_time() -> None:
    """A caller's method name is a string like any other (read from a file, joined): keyed by its value, not its identity."""
    method = "".join(["percen", "tile"])  # noqa: FLY002  (equal to "percentile", another object)
    assert method == "percentile" and id(method) != id("percentile")
    assert cache_key("model", "data", "feeds", method, 99.9, None) != cache_key("model", "data", "feeds", method, 99.999, None)


def test_the_settings_must_be_named(calibration_setup: tuple[Path, Path, Path]) -> None:
    """method, percentile, op_types ... are keyword-only: a call that passes them by position (one slip swaps two
    settings, each a valid value) is refused before anything is calibrated or cached."""
    model, images, cache = calibration_setup
    with pytest.raises(TypeError, match="positional"):
        calibration_ranges(model, file_sha256(model), _source(images), INPUTS, "minmax", 99.999, None, cache, print)  # type: ignore[misc]
    assert not cache.exists()


def _format_1_key(model: str, data: str, settings: dict[str, Any]) -> str:
    """Format 1, written out independently of the code: the first 32 hex digits (128 bits) of SHA-256 over
    `model|data|settings`, the settings a JSON object with sorted keys, holding the format number and onnxruntime's version."""
    text = json.dumps({"format": 1, "onnxruntime": onnxruntime.__version__, **settings}, sort_keys=True)
    return hashlib.sha256(f"{model}|{data}|{text}".encode()).hexdigest()[:32]


@pytest.mark.parametrize(
    ("arguments", "settings"),
    [
        (("minmax", 99.999, None, None), {"feeds": "f", "method": "minmax", "percentile": None, "op_types": None}),
        (
            ("percentile", 99.9, ["MatMul", "Conv"], 2),
            {"feeds": "f", "method": "percentile", "percentile": 99.9, "op_types": ["Conv", "MatMul"], "threads": 2},
        ),
    ],
)
def test_an_entry_is_found_by_its_format_1_key(arguments: tuple[Any, ...], settings: dict[str, Any]) -> None:
    """Cache entries outlive the run (and the quant) that wrote them: an entry written by format 1 is found as long
    as the format is 1, and its key keeps 128 bits (a shorter one raises the risk of two inputs sharing an entry).
    Changing how the key is made means a new CACHE_FORMAT, and this test written out again for it."""
    method, percentile, op_types, threads = arguments
    assert ranges_module.CACHE_FORMAT == 1
    assert cache_key("m", "d", "f", method, percentile, op_types, threads) == _format_1_key("m", "d", settings)


def test_an_entry_of_another_format_is_not_reused(calibration_setup: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A new CACHE_FORMAT (what the entries mean changed) must not read the entries the old format wrote."""
    model, images, cache = calibration_setup
    old = _ranges(model, images, cache)
    monkeypatch.setattr(ranges_module, "CACHE_FORMAT", ranges_module.CACHE_FORMAT + 1)
    new = _ranges(model, images, cache)
    assert not new.cache_hit and new.key != old.key and old.cache_file.is_file()


# Each change of pre-processing gives the model other tensors, so other ranges: a cached entry must not be reused.
PREPROCESSING_CHANGES = {
    "resize": {**X, "resize": {"mode": "height", "height": HEIGHT, "min_width": 8, "max_width": 12}},
    "scale": {**X, "scale": 1.0},
    "mean": {**X, "mean": [0.5, 0.5, 0.5]},
    "std": {**X, "std": [0.25, 0.25, 0.25]},
    "color": {**X, "color": "BGR"},
    "pad_value": {**X, "resize": {"mode": "height", "height": HEIGHT, "min_width": 40}, "pad_value": -1.0},
}


@pytest.mark.parametrize("field", sorted(PREPROCESSING_CHANGES))
def test_a_change_of_pre_processing_recomputes_the_ranges(calibration_setup: tuple[Path, Path, Path], field: str) -> None:
    model, images, cache = calibration_setup
    before = _ranges(model, images, cache)
    after = _ranges(model, images, cache, x=PREPROCESSING_CHANGES[field])
    assert not after.cache_hit and after.key != before.key
    assert _stored(after) != _stored(before)  # the ranges really differ: reusing them would have been wrong


def test_the_layout_is_part_of_the_key(tmp_path: Path) -> None:
    """NHWC vs NCHW cannot feed one model, so the key is checked directly against the source's signature."""
    images = tmp_path / "calib"
    write_images(images, 2, seed=0)
    nchw, nhwc = _source(images), _source(images, {**X, "layout": "NHWC"})
    assert nchw.fingerprint == nhwc.fingerprint  # same files ...
    assert nchw.feeds_signature != nhwc.feeds_signature  # ... other tensors


def test_op_types_are_honoured_and_in_the_key(calibration_setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = calibration_setup
    conv = _ranges(model, images, cache, op_types=["Conv"])
    matmul = _ranges(model, images, cache, op_types=["MatMul"])
    assert not matmul.cache_hit and matmul.key != conv.key
    # The ranges observed are those of the op types asked for: 't' feeds the MatMul head only, 'x' the first Conv only.
    assert "t" in _stored(matmul) and "t" not in _stored(conv)
    assert "x" in _stored(conv) and "x" not in _stored(matmul)
    assert _ranges(model, images, cache, op_types=["MatMul"]).cache_hit
    assert _ranges(model, images, cache, op_types=["MatMul", "Conv"]).key == _ranges(model, images, cache, op_types=["Conv", "MatMul"]).key


def test_the_number_of_samples_is_in_the_key(calibration_setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = calibration_setup
    every = _ranges(model, images, cache)
    fewer = _ranges(model, images, cache, samples=2)
    assert not fewer.cache_hit and fewer.samples == 2 and fewer.key != every.key


def test_the_model_calibrated_is_the_prepared_one(calibration_setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """`prepare` (opset, pre-processing) changes the graph calibrated, so the ranges are keyed on the prepared bytes."""
    model, images, cache = calibration_setup
    keys = {}
    for opset in (13, 17):
        options = StaticInt8Options.model_validate({"method": "static_int8", "prepare": {"opset": opset, "preprocess": False}})
        context = BuildContext(model, file_sha256(model), INPUTS, tmp_path / "work", cache, calibration=_source(images), log=lambda _: None)
        built = build_static_int8(options, context, tmp_path / f"int8-{opset}.onnx")
        assert max(o.version for o in onnx.load(str(built.path)).opset_import if o.domain in ("", "ai.onnx")) == opset
        keys[opset] = built.details["calibration"]
        assert not keys[opset]["cache_hit"]
    assert keys[13]["key"] != keys[17]["key"]


def test_changing_the_mean_in_a_recipe_recomputes_the_ranges(workspace: dict[str, Path]) -> None:
    root = workspace["root"]
    variants = {"int8": {"method": "static_int8", "op_types": ["Conv", "MatMul"]}}
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"], variants=variants, gates=[{"metric": "nonfinite", "max": 0}])
    cache = root / "cache"

    def calibration_of_a_run(out: str) -> dict[str, Any]:
        path = write_recipe(root, recipe)
        done = run_cli("--recipe", str(path), "--out", str(root / out), "--cache", str(cache), cwd=root)
        assert done.returncode == 0, done.stderr
        return json.loads((root / out / "results.json").read_text())["variants"]["int8"]["build"]["calibration"]

    first = calibration_of_a_run("run1")
    assert not first["cache_hit"]
    assert calibration_of_a_run("run2")["cache_hit"]  # nothing changed: reused
    recipe["inputs"]["x"]["mean"] = [0.25, 0.25, 0.25]
    third = calibration_of_a_run("run3")
    assert not third["cache_hit"] and third["key"] != first["key"]
    ranges = {p.stem: json.loads(p.read_text()) for p in (cache / "calibration").glob("*.json")}
    low_before, low_after = (ranges[run["key"]]["data"]["x"]["lowest"]["data"][0] for run in (first, third))
    assert low_after > low_before  # a smaller mean gives larger inputs: the new ranges are of the new tensors
    assert yaml.safe_load((root / "recipe.yaml").read_text())["inputs"]["x"]["mean"] == [0.25, 0.25, 0.25]


def test_without_op_types_the_ranges_are_those_quantize_static_would_calibrate(calibration_setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, images, cache = calibration_setup
    default = _ranges(model, images, cache)
    expected = collect_ranges(model, _feeds(images), "minmax", op_types_to_calibrate=quantize_static_default_op_types(), work_dir=tmp_path / "w")
    assert set(_stored(default)) == set(expected) and "x" in expected and "t" in expected


def test_scratch_of_a_killed_calibration_is_removed_and_a_live_one_kept(calibration_setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = calibration_setup
    work_root = cache / "calibration"
    dead, live = work_root / ".work-10000000-abc", work_root / f".work-{os.getpid()}-abc"  # 10000000: beyond any pid
    for scratch in (dead, live):
        scratch.mkdir(parents=True)
    _ranges(model, images, cache)
    assert not dead.exists() and live.is_dir()


def test_the_calibration_test_point_strikes_one_sample_in_and_leaves_no_entry(
    calibration_setup: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash-safety tests kill a run at this point; it must be inside the work, after one sample."""
    model, images, cache = calibration_setup
    monkeypatch.setenv("QUANT_TEST_FAIL_AT", "calibration")
    runs: list[int] = []
    source = _source(images)
    with pytest.raises(InjectedFailure):
        calibration_ranges(
            model, file_sha256(model), source, INPUTS, method="minmax", percentile=99.999, op_types=None, cache_dir=cache, log=print,
            progress=runs.append,
        )
    assert runs == [1]  # the first sample went through the model, the second never did
    assert list((cache / "calibration").iterdir()) == []  # no cache entry, and the scratch folder is gone
