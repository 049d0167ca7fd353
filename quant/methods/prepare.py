"""Model preparation shared by the INT8 methods: opset upgrade and onnxruntime's quant_pre_process."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import version_converter

from quant.errors import BuildError
from quant.methods.fold import HARDSWISH_OPSET, fuse_exact
from quant.model import default_opset, load_proto, save_model
from quant.recipe.schema import Prepare


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """quant_pre_process leaves sym_shape_infer_temp.onnx in the cwd: keep it out of the user's folder."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def prepared_model(model_path: Path, model_sha256: str, prepare: Prepare, cache_dir: Path) -> Path:
    """The model after the requested preparation; cached by the exact source bytes and settings."""
    if prepare.opset is None and not prepare.preprocess and not prepare.fuse:
        return model_path
    key = hashlib.sha256(f"{model_sha256}|{prepare.model_dump_json()}".encode()).hexdigest()[:20]
    target = cache_dir / "prepared" / f"{key}.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch_dir:
        scratch = Path(scratch_dir)
        current = model_path
        if prepare.opset is not None:
            current = _upgrade_opset(current, prepare.opset, scratch / "opset.onnx")
        if prepare.preprocess:
            current = _preprocess(current, scratch / "pre.onnx", scratch)
        if prepare.fuse:
            current = _fuse(_upgrade_opset(current, HARDSWISH_OPSET, scratch / "opset14.onnx"), scratch / "fused.onnx")
        # Rename into place last, so a half-written file is never taken for a cached one.
        if current == model_path:
            return model_path
        os.replace(current, target)
    return target


def _upgrade_opset(source: Path, opset: int, out: Path) -> Path:
    model = load_proto(source)
    current = default_opset(model)
    if current >= opset:
        return source
    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as error:  # the converter raises bare RuntimeErrors for unsupported ops
        raise BuildError(f"cannot convert the model from opset {current} to {opset}: {str(error)[:200]}") from None
    save_model(converted, out)
    return out


def _fuse(source: Path, out: Path) -> Path:
    model, _ = fuse_exact(load_proto(source))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise BuildError(f"the fused model does not check: {str(error)[:200]}") from None
    save_model(model, out)
    return out


def _preprocess(source: Path, out: Path, scratch: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Symbolic shape inference fails on models with data-dependent shapes (both PP-OCRv4 models);
    # ONNX shape inference plus the optimiser's BN folding is what static INT8 needs.
    # Absolute paths: the cwd changes below, and --out/--cache may be relative.
    source, out = source.resolve(), out.resolve()
    with working_directory(scratch):
        try:
            quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
        except Exception as error:
            raise BuildError(f"quant_pre_process failed: {type(error).__name__}: {str(error)[:200]}") from None
    onnx.checker.check_model(str(out))
    return out
