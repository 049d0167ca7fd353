"""Exact FP32 normalisation before an FP16 conversion: every node named, Constant nodes folded into
initializers, BatchNormalization folded into the Conv before it.

Why: exports such as PP-OCRv4 det keep every weight in an unnamed `Constant` node, so keeping one node in
FP32 by name is impossible (no name) and useless (its weight, a Constant, is still cast to FP16). A
BatchNormalization's running variance can exceed FP16's range (9.79e7 in PP-OCRv4 det) while the folded
Conv weight, w * gamma / sqrt(var + eps), is small.

The rewrites are onnxruntime's own offline basic optimisation (constant folding, Conv+BN / Conv+Mul /
Conv+Add fusion, Identity and Dropout removal): only standard ONNX ops come out, the same rewrites
onnxruntime applies at load time, so the FP32 model answers as before (checked in the tests and, on the
tuning data, on every repair run).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx
import onnxruntime as ort

from quant.errors import BuildError
from quant.model import external_data_files, load_proto, save_model

NORMALISE_VERSION = 1  # part of the cache key: bump when the rewrites change


def name_nodes(model: onnx.ModelProto) -> int:
    """Give every unnamed node a stable, unique name (op type and first output); returns how many were named."""
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for node in model.graph.node:
        if node.name:
            continue
        base = f"{node.op_type}:{node.output[0] if node.output else len(taken)}"
        name, index = base, 1
        while name in taken:
            name, index = f"{base}#{index}", index + 1
        node.name = name
        taken.add(name)
        named += 1
    return named


def _optimise(source: Path, out: Path, fold_batchnorm: bool) -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    disabled = [] if fold_batchnorm else ["ConvBNFusion"]
    try:
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    except Exception as error:  # onnxruntime raises its own exception types for models it cannot load
        raise BuildError(f"onnxruntime's offline optimisation failed: {type(error).__name__}: {str(error)[:200]}") from None


def normalised_model(model_path: Path, model_sha256: str, fold_batchnorm: bool, cache_dir: Path) -> Path:
    """The model after the exact rewrites; cached by the source bytes and the settings.

    Models whose weights live in external data files are returned unchanged: the rewrites would load
    every weight into memory, which the FP16 build of such models avoids."""
    if external_data_files(load_proto(model_path, load_external=False)):
        return model_path
    key = hashlib.sha256(f"{model_sha256}|normalise-v{NORMALISE_VERSION}|bn={fold_batchnorm}|ort={ort.__version__}".encode()).hexdigest()[:20]
    target = cache_dir / "normalised" / f"{key}.onnx"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f"{target.stem}.tmp{os.getpid()}.onnx")
        try:
            _optimise(model_path, staged, fold_batchnorm)
            model = load_proto(staged)
            name_nodes(model)
            try:
                onnx.checker.check_model(model)
            except onnx.checker.ValidationError as error:
                raise BuildError(f"the normalised model does not check: {str(error)[:200]}") from None
            save_model(model, staged)
            os.replace(staged, target)  # renamed into place last: a half-written file is never taken for a cached one
        finally:
            staged.unlink(missing_ok=True)
    return target
