"""The FP32 model: find it, load it safely, check it, hash it, and open onnxruntime sessions on it."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError, EncodeError

from quant.cores import no_spinning_if_shared
from quant.errors import ModelError
from quant.recipe.schema import ModelSource, resolve

# ONNX's own limit for a single protobuf file; larger models must use external data.
PROTOBUF_LIMIT = 2**31 - 1
# onnxruntime only guarantees opset 7 and later for the default domain (it cannot run e.g. Relu-1 or Add-6).
MIN_OPSET = 7


# A tensor's declared shape: fixed sizes, symbolic names, or None when unknown.
Dims = list[int | str | None]


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the tool needs to know about a checked model."""

    path: Path
    sha256: str
    size_bytes: int  # the .onnx file plus its external data files
    opset: int
    inputs: dict[str, Dims]
    outputs: dict[str, Dims]
    metadata: dict[str, str]


def package_root(package: str, field: str) -> Path:
    """The folder of an installed Python package (models and their files ship inside wheels)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # e.g. "..x" or "missing_parent.child"
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package '{package}' is not installed (pip install it)", field=field)
    return Path(next(iter(spec.submodule_search_locations)))


def locate(source: ModelSource, base_dir: Path) -> Path:
    """The model file a recipe names: a path, or a path inside an installed package."""
    if source.package:
        path = package_root(source.package, "model.package") / source.path
    else:
        path = resolve(base_dir, source.path)
    if not path.is_file():
        raise ModelError("model file not found", file=str(path), field="model.path")
    return path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """Locations of every external-data tensor, as written in the model."""
    locations: set[str] = set()
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return sorted(locations)


def _all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(model))


def check_external_locations(model: onnx.ModelProto, model_path: Path) -> None:
    """Refuse external data that escapes the model's folder (../, absolute paths, symlinks out)."""
    folder = model_path.parent.resolve()
    for location in external_data_files(model):
        if os.path.isabs(location) or Path(location).drive:
            raise ModelError(f"external data location '{location}' is an absolute path; refused", file=str(model_path), field="model.path")
        target = (folder / location).resolve()
        if folder not in target.parents:
            raise ModelError(f"external data location '{location}' escapes the model's folder; refused", file=str(model_path), field="model.path")
        if not target.is_file():
            raise ModelError(f"external data file '{location}' is missing", file=str(model_path), field="model.path")


def load_proto(path: Path, *, load_external: bool = True) -> onnx.ModelProto:
    """Parse a model file with a clear error for empty, truncated or non-ONNX files."""
    size = path.stat().st_size
    if size == 0:
        raise ModelError("the model file is empty", file=str(path), field="model.path")
    if size > PROTOBUF_LIMIT:  # refused before reading gigabytes that protobuf cannot parse anyway
        raise ModelError(
            f"the .onnx file is {size / 2**30:.1f} GiB, over the 2 GB protobuf limit; save the weights as external data",
            file=str(path),
            field="model.path",
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as error:
        raise ModelError(f"not a readable ONNX model ({type(error).__name__}: {str(error)[:120]})", file=str(path), field="model.path") from None
    except Exception as error:  # protobuf raises several undocumented types on garbage
        raise ModelError(f"not a readable ONNX model ({type(error).__name__})", file=str(path), field="model.path") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError("not an ONNX model (no graph)", file=str(path), field="model.path")
    check_external_locations(model, path)
    if load_external and external_data_files(model):
        onnx.load_external_data_for_model(model, str(path.parent))
    return model


def inspect_model(path: Path) -> ModelInfo:
    """Load without external data, run the ONNX checker (by path, so >2 GB works), and describe the model."""
    model = load_proto(path, load_external=False)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "invalid model"
        raise ModelError(f"fails onnx.checker: {first_line[:200]}", file=str(path), field="model.path") from None
    except Exception as error:
        raise ModelError(f"fails onnx.checker ({type(error).__name__}: {str(error)[:160]})", file=str(path), field="model.path") from None
    initializer_names = {t.name for t in model.graph.initializer}
    opset = default_opset(model)
    if 0 < opset < MIN_OPSET:  # 0: no default-domain ops at all
        raise ModelError(
            f"opset {opset} is too old: onnxruntime needs opset {MIN_OPSET} or later (convert it with onnx.version_converter)",
            file=str(path),
            field="model.path",
        )
    externals = external_data_files(model)
    size = path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in externals)
    return ModelInfo(
        path=path,
        sha256=file_sha256(path),
        size_bytes=size,
        opset=opset,
        inputs={i.name: _dims(i) for i in model.graph.input if i.name not in initializer_names},
        outputs={o.name: _dims(o) for o in model.graph.output},
        metadata={p.key: p.value for p in model.metadata_props},
    )


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset for the default ONNX domain (0 when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def model_size(path: Path) -> int:
    """Bytes of a model file and the external data files it references."""
    model = onnx.load(str(path), load_external_data=False)
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in external_data_files(model))


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Save as one file when it fits in a protobuf, else with one external data file beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fits = model.ByteSize() < PROTOBUF_LIMIT
    except EncodeError:  # protobuf cannot even size a message over 2 GB
        fits = False
    if fits:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data")


def session(path: Path, *, threads: int = 1, optimize: bool = True) -> ort.InferenceSession:
    """A CPU onnxruntime session with a fixed thread count (reproducible timing)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    no_spinning_if_shared(options)  # a unit beside other units: idle threads must not burn their cores
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
