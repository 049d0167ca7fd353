"""Model loading: missing, empty, truncated, non-ONNX, checker failures, external data, hostile locations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from quant.errors import ModelError
from quant.model import inspect_model, load_proto, locate
from quant.recipe.schema import ModelSource
from tests.conftest import tiny_ctc_model


def test_inspect_describes_the_model(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(tiny_ctc_model(), str(path))
    info = inspect_model(path)
    assert info.inputs == {"x": [1, 3, 8, "W"]}
    assert list(info.outputs) == ["probs"]
    assert info.opset == 13
    assert len(info.sha256) == 64 and info.size_bytes == path.stat().st_size
    assert info.metadata["character"].splitlines() == list("abcde")


def test_locate_in_installed_package() -> None:
    path = locate(ModelSource(package="rapidocr_onnxruntime", path="models/ch_PP-OCRv4_rec_infer.onnx"), Path("."))
    assert path.is_file() and path.name == "ch_PP-OCRv4_rec_infer.onnx"


def test_locate_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as missing:
        locate(ModelSource(path="nope.onnx"), tmp_path)
    assert missing.value.field == "model.path" and "not found" in str(missing.value)
    with pytest.raises(ModelError) as no_package:
        locate(ModelSource(package="no_such_package_here", path="m.onnx"), tmp_path)
    assert no_package.value.field == "model.package"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "empty"),
        (b"this is not a protobuf at all \xff\xfe", "not"),
        (b"\x08\x07\x12\x04test", "not"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError) as caught:
        inspect_model(path)
    assert words in str(caught.value) and caught.value.file == str(path)


def test_truncated_model(tmp_path: Path) -> None:
    data = tiny_ctc_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        inspect_model(path)


def test_checker_failure_is_a_model_error(tmp_path: Path) -> None:
    model = tiny_ctc_model()
    model.graph.node[1].op_type = "NoSuchOp"
    path = tmp_path / "bad_op.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="onnx.checker"):
        inspect_model(path)


def _with_external_data(tmp_path: Path) -> Path:
    path = tmp_path / "ext" / "m.onnx"
    path.parent.mkdir()
    onnx.save(tiny_ctc_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    return path


def test_external_data_is_loaded_and_counted(tmp_path: Path) -> None:
    path = _with_external_data(tmp_path)
    info = inspect_model(path)
    assert info.size_bytes == path.stat().st_size + (path.parent / "m.data").stat().st_size
    model = load_proto(path)
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), numpy_helper.to_array(tiny_ctc_model().graph.initializer[0]))


def test_missing_external_data(tmp_path: Path) -> None:
    path = _with_external_data(tmp_path)
    (path.parent / "m.data").unlink()
    with pytest.raises(ModelError, match="missing"):
        inspect_model(path)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../escape.bin"])
def test_external_data_escaping_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    path = _with_external_data(tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, str(path))
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    with pytest.raises(ModelError, match="refused"):
        inspect_model(path)


def test_external_data_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    path = _with_external_data(tmp_path)
    real = tmp_path / "elsewhere.data"
    (path.parent / "m.data").rename(real)
    (path.parent / "m.data").symlink_to(real)
    with pytest.raises(ModelError, match="escapes"):
        inspect_model(path)


def test_graph_with_no_nodes_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "hollow.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [])), str(path))
    with pytest.raises(ModelError, match="no graph"):
        inspect_model(path)
