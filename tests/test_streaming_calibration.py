"""Streaming calibration vs onnxruntime's own calibrators and quantize_static (no mocks)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static
from onnxruntime.quantization.calibrate import HistogramCollector, TensorsData, create_calibrator

try:
    import quant.calibration.streaming  # noqa: F401
except ModuleNotFoundError:  # running pytest from elsewhere without the repo on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant.calibration import streaming
from quant.calibration.streaming import (
    collect_ranges,
    quantize_static_default_op_types,
    quantize_with_ranges,
    ranges_from_json,
    ranges_to_json,
)

FIXED_SHAPES = [(1, 3, 12, 20)] * 6
VARIABLE_SHAPES = [(1, 3, 12, 20), (1, 3, 8, 36), (1, 3, 16, 12), (1, 3, 12, 52), (1, 3, 20, 16)]


# ------------------------------------------------------------------------- fixtures


def _tiny_model() -> onnx.ModelProto:
    """x[1,3,H,W] -> Conv -> Relu -> Conv -> Add -> GlobalAveragePool -> Flatten -> MatMul."""
    rng = np.random.default_rng(42)

    def init(name: str, shape: tuple[int, ...], scale: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "c1"], ["a1"], name="add1"),
        helper.make_node("GlobalAveragePool", ["a1"], ["g1"], name="gap"),
        helper.make_node("Flatten", ["g1"], ["f1"], name="flatten"),
        helper.make_node("MatMul", ["f1", "w3"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [init("w1", (4, 3, 3, 3)), init("b1", (4,)), init("w2", (4, 4, 3, 3)), init("b2", (4,)), init("w3", (4, 5))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save(_tiny_model(), str(path))
    return path


def _batches(shapes: list[tuple[int, ...]], seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    # Skewed data with a few outliers so entropy/percentile thresholds are not trivial.
    out = []
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        x.flat[rng.integers(0, x.size, 3)] *= 8
        out.append({"x": x})
    return out


class _Reader(CalibrationDataReader):
    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._it = iter([{k: v.copy() for k, v in b.items()} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _ort_ranges(model_path: Path, batches, method: CalibrationMethod, tmp: Path, **extra) -> TensorsData:
    calibrator = create_calibrator(
        model_path, None, augmented_model_path=str(tmp / "ort_aug.onnx"), calibrate_method=method, extra_options=extra
    )
    calibrator.collect_data(_Reader(batches))
    return calibrator.compute_data()


def _assert_same_ranges(ours: TensorsData, ref: TensorsData) -> None:
    assert ours.calibration_method == ref.calibration_method
    assert set(ours.keys()) == set(ref.keys())
    for name in ref:
        for lo_hi in ("lowest", "highest"):
            a, b = getattr(ours[name], lo_hi), getattr(ref[name], lo_hi)
            assert np.asarray(a).dtype == np.asarray(b).dtype, (name, lo_hi)
            assert np.shape(a) == np.shape(b), (name, lo_hi)
            np.testing.assert_array_equal(a, b, err_msg=f"{name}.{lo_hi}")


# -------------------------------------------------------------------------- MinMax


@pytest.mark.parametrize("shapes", [FIXED_SHAPES, VARIABLE_SHAPES], ids=["fixed", "variable"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_minmax_equals_ort_minmax_calibrater(model_path: Path, tmp_path: Path, shapes, symmetric: bool) -> None:
    batches = _batches(shapes)
    ref = _ort_ranges(model_path, batches, CalibrationMethod.MinMax, tmp_path, symmetric=symmetric)
    ours = collect_ranges(model_path, batches, "minmax", symmetric=symmetric, work_dir=tmp_path / "w")
    _assert_same_ranges(ours, ref)


def test_minmax_reads_a_generator_once_and_reports_progress(model_path: Path, tmp_path: Path) -> None:
    batches = _batches(VARIABLE_SHAPES)
    seen: list[int] = []
    ours = collect_ranges(model_path, (b for b in batches), "minmax", work_dir=tmp_path, progress=seen.append)
    assert seen == list(range(1, len(batches) + 1))
    _assert_same_ranges(ours, _ort_ranges(model_path, batches, CalibrationMethod.MinMax, tmp_path))


def test_op_types_to_calibrate_restricts_tensors(model_path: Path, tmp_path: Path) -> None:
    ours = collect_ranges(
        model_path, _batches(FIXED_SHAPES), "minmax", op_types_to_calibrate=["Relu"], work_dir=tmp_path
    )
    assert set(ours.keys()) == {"c1", "r1"}


# ------------------------------------------------------------- histogram methods

HISTOGRAM_CASES = [
    ("entropy", CalibrationMethod.Entropy, {}),
    ("entropy", CalibrationMethod.Entropy, {"num_bins": 512}),
    ("percentile", CalibrationMethod.Percentile, {}),  # ORT default: symmetric, |x| histogram
    ("percentile", CalibrationMethod.Percentile, {"symmetric": False, "percentile": 99.0}),
    ("distribution", CalibrationMethod.Distribution, {}),
]


def _ort_extra(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k in {"num_bins", "symmetric", "percentile"}}


@pytest.mark.parametrize(("method", "ort_method", "kwargs"), HISTOGRAM_CASES)
def test_histogram_methods_equal_ort_on_fixed_shapes(
    model_path: Path, tmp_path: Path, method: str, ort_method: CalibrationMethod, kwargs: dict
) -> None:
    batches = _batches(FIXED_SHAPES)
    ref = _ort_ranges(model_path, batches, ort_method, tmp_path, **_ort_extra(kwargs))
    ours = collect_ranges(model_path, batches, method, work_dir=tmp_path / "w", **kwargs)
    _assert_same_ranges(ours, ref)
    if method == "distribution":
        for name in ref:
            np.testing.assert_array_equal(ours[name].hist, ref[name].hist)
            np.testing.assert_array_equal(ours[name].avg, ref[name].avg)


@pytest.mark.parametrize("binning_threads", [1, 3])
@pytest.mark.parametrize(("method", "ort_method"), [("entropy", CalibrationMethod.Entropy), ("percentile", CalibrationMethod.Percentile)])
def test_histograms_binned_in_this_thread_or_in_parallel_equal_ort(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, binning_threads: int, method: str, ort_method: CalibrationMethod
) -> None:
    # One binning thread bins in the calling thread; more bin a run's tensors in a thread pool.
    monkeypatch.setattr(streaming, "_binning_threads", lambda _: binning_threads)
    batches = _batches(FIXED_SHAPES)
    ours = collect_ranges(model_path, batches, method, work_dir=tmp_path / "w")
    _assert_same_ranges(ours, _ort_ranges(model_path, batches, ort_method, tmp_path))


def _all_activations(model_path: Path, batches, names: list[str]) -> dict[str, np.ndarray]:
    """Every observed tensor of every batch, flattened and concatenated (plain ORT run)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    infos = {vi.name: vi for vi in [*model.graph.value_info, *model.graph.output]}
    model.graph.output.extend(infos[n] for n in names if n not in {o.name for o in model.graph.output} and n != "x")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # as the calibrators
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inner = [n for n in names if n != "x"]
    flat: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for batch in batches:
        for name, value in zip(inner, session.run(inner, batch), strict=True):
            flat[name].append(value.reshape(-1))
        flat["x"].append(batch["x"].reshape(-1))
    return {n: np.concatenate(v) for n, v in flat.items()}


@pytest.mark.parametrize(("method", "ort_method", "kwargs"), HISTOGRAM_CASES)
def test_histogram_methods_on_variable_shapes_equal_ort_math_on_all_values(
    model_path: Path, tmp_path: Path, method: str, ort_method: CalibrationMethod, kwargs: dict
) -> None:
    # ORT's calibrater cannot stack ragged batches; its HistogramCollector applied to all
    # values (flattened, concatenated) is what it would compute if it could.
    batches = _batches(VARIABLE_SHAPES)
    ours = collect_ranges(model_path, batches, method, work_dir=tmp_path, **kwargs)
    defaults = {"entropy": (128, False), "percentile": (2048, True), "distribution": (2048, False)}[method]
    collector = HistogramCollector(
        method=method,
        symmetric=kwargs.get("symmetric", defaults[1]),
        num_bins=kwargs.get("num_bins", defaults[0]),
        num_quantized_bins=128,
        percentile=kwargs.get("percentile", 99.999),
        scenario="same",
    )
    collector.collect(_all_activations(model_path, batches, sorted(ours.keys())))
    ref = TensorsData(ort_method, collector.compute_collection_result())
    _assert_same_ranges(ours, ref)


@pytest.mark.parametrize("ort_method", [CalibrationMethod.Entropy, CalibrationMethod.Percentile])
def test_ort_histogram_calibraters_crash_on_variable_shapes(
    model_path: Path, tmp_path: Path, ort_method: CalibrationMethod
) -> None:
    # Canary for the bug collect_ranges works around; if this starts passing, ORT fixed it.
    with pytest.raises(ValueError, match="sequence"):
        _ort_ranges(model_path, _batches(VARIABLE_SHAPES), ort_method, tmp_path)


def _model_with_empty_tensor() -> onnx.ModelProto:
    """Conv -> Resize whose `roi` is an empty float Constant (as in PP-OCR det's FPN)."""
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((2, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["roi"], value=helper.make_tensor("roi_v", TensorProto.FLOAT, [0], [])),
        helper.make_node("Constant", [], ["scales"], value=numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32))),
        helper.make_node("Resize", ["c", "roi", "scales"], ["r"], mode="nearest"),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "empty_roi",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # ORT's math on an empty histogram
@pytest.mark.parametrize(
    ("method", "ort_method", "kwargs"), [("minmax", CalibrationMethod.MinMax, {}), *HISTOGRAM_CASES]
)
def test_empty_tensors_are_handled_like_ort(
    tmp_path: Path, method: str, ort_method: CalibrationMethod, kwargs: dict
) -> None:
    path = tmp_path / "empty_roi.onnx"
    onnx.save(_model_with_empty_tensor(), str(path))
    batches = _batches(FIXED_SHAPES[:3])
    ref = _ort_ranges(path, batches, ort_method, tmp_path, **_ort_extra(kwargs))
    assert "roi" in ref
    _assert_same_ranges(collect_ranges(path, batches, method, work_dir=tmp_path / "w", **kwargs), ref)


def test_histogram_chunking_does_not_change_results(model_path: Path, tmp_path: Path) -> None:
    batches = _batches(VARIABLE_SHAPES)
    one_pass = collect_ranges(model_path, batches, "percentile", work_dir=tmp_path / "a")
    seen: list[int] = []
    per_tensor = collect_ranges(
        model_path, batches, "percentile", work_dir=tmp_path / "b", max_pass_bytes=1, progress=seen.append
    )
    _assert_same_ranges(per_tensor, one_pass)
    # range pass + one pass per non-input tensor (c1, r1, c2, a1, g1, f1, y).
    assert seen[-1] == len(batches) * (1 + 7)


def test_histogram_methods_reject_one_shot_iterators(model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="re-iterable"):
        collect_ranges(model_path, iter(_batches(FIXED_SHAPES)), "entropy", work_dir=tmp_path)


# -------------------------------------------------------- quantize_static identity


def _quantize_reference(model_path: Path, out: Path, batches, method: CalibrationMethod, **kwargs) -> bytes:
    quantize_static(str(model_path), str(out), _Reader(batches), calibrate_method=method, **kwargs)
    return out.read_bytes()


@pytest.mark.parametrize("quant_format", [QuantFormat.QDQ, QuantFormat.QOperator])
@pytest.mark.parametrize("op_types", [None, "quantize_static"])
def test_quantize_with_ranges_is_byte_identical_to_quantize_static(
    model_path: Path, tmp_path: Path, quant_format: QuantFormat, op_types
) -> None:
    batches = _batches(VARIABLE_SHAPES)
    ref = _quantize_reference(
        model_path, tmp_path / "ref.onnx", batches, CalibrationMethod.MinMax, quant_format=quant_format
    )
    calibrate_types = quantize_static_default_op_types() if op_types else None
    ranges = collect_ranges(
        model_path, batches, "minmax", op_types_to_calibrate=calibrate_types, work_dir=tmp_path / "w"
    )
    quantize_with_ranges(model_path, tmp_path / "ours.onnx", ranges, quant_format=quant_format)
    ours = (tmp_path / "ours.onnx").read_bytes()
    assert ours == ref
    assert any(n.op_type in {"QuantizeLinear", "QLinearConv"} for n in onnx.load_from_string(ours).graph.node)


def test_quantize_with_ranges_identical_for_percentile_and_options(model_path: Path, tmp_path: Path) -> None:
    batches = _batches(FIXED_SHAPES)
    options = {
        "per_channel": True,
        "nodes_to_exclude": ["matmul"],
        "extra_options": {"ActivationSymmetric": True},
    }
    ref = _quantize_reference(model_path, tmp_path / "ref.onnx", batches, CalibrationMethod.Percentile, **options)
    ranges = collect_ranges(model_path, batches, "percentile", work_dir=tmp_path / "w")
    quantize_with_ranges(model_path, tmp_path / "ours.onnx", ranges, **options)
    assert (tmp_path / "ours.onnx").read_bytes() == ref


# ------------------------------------------------------------------ serialisation


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile", "distribution"])
def test_ranges_json_round_trip(model_path: Path, tmp_path: Path, method: str) -> None:
    ranges = collect_ranges(model_path, _batches(VARIABLE_SHAPES), method, work_dir=tmp_path)
    payload = ranges_to_json(ranges)
    back = ranges_from_json(json.loads(json.dumps(payload)))  # must be plain JSON
    _assert_same_ranges(back, ranges)
    quantize_with_ranges(model_path, tmp_path / "a.onnx", ranges)
    quantize_with_ranges(model_path, tmp_path / "b.onnx", back)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_ranges_from_json_reads_quantize_static_cache_files(model_path: Path, tmp_path: Path) -> None:
    batches = _batches(VARIABLE_SHAPES)
    cache = tmp_path / "cache.json"
    quantize_static(str(model_path), str(tmp_path / "q.onnx"), _Reader(batches), calibration_cache_path=cache)
    from_ort = ranges_from_json(json.loads(cache.read_text()))
    ours = collect_ranges(
        model_path, batches, "minmax", op_types_to_calibrate=quantize_static_default_op_types(), work_dir=tmp_path
    )
    _assert_same_ranges(ours, from_ort)


class _Shrinking:
    """Re-iterable whose second pass yields fewer feeds (a buggy data source)."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        yield from self.batches if self.passes == 1 else self.batches[:-1]


def test_histogram_methods_detect_batches_changing_between_passes(model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="first pass"):
        collect_ranges(model_path, _Shrinking(_batches(FIXED_SHAPES)), "entropy", work_dir=tmp_path)
