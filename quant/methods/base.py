"""What every method shares: the build context it receives, the result it returns, and the builders by method name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxruntime.quantization import QuantType
from pydantic import BaseModel

from quant.data.sources import SampleSource
from quant.model import Dims

# The recipe's integer type names, as onnxruntime's quantizers take them.
QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


@dataclass(frozen=True)
class BuildContext:
    """Everything a method may read. A method writes only `out_path` and files under `work_dir`."""

    model_path: Path  # the FP32 model
    model_sha256: str
    model_inputs: dict[str, Dims]
    work_dir: Path  # scratch space for this variant
    cache_dir: Path  # shared across variants and runs; keys must include every input that matters
    calibration: SampleSource | None = None
    tuning: SampleSource | None = None  # only for methods with their own accuracy-aware tuning: never the gates' evaluation set
    log: Callable[[str], None] = print
    threads: int | None = None  # onnxruntime intra-op threads of its sessions (the recipe's bench.threads; None: onnxruntime's default)


@dataclass
class BuildResult:
    """The built model file and what the method wants recorded about how it was made."""

    path: Path
    details: dict[str, Any] = field(default_factory=dict)


Builder = Callable[[Any, BuildContext, Path], BuildResult]
_BUILDERS: dict[str, Builder] = {}


def register(method: str) -> Callable[[Builder], Builder]:
    """Methods register themselves under the name recipes use in `method:`."""

    def add(builder: Builder) -> Builder:
        _BUILDERS[method] = builder
        return builder

    return add


def builder_for(options: BaseModel) -> Builder:
    import quant.methods  # noqa: F401  (importing the package registers every method)

    method = options.method
    if method not in _BUILDERS:
        raise KeyError(f"no builder registered for method '{method}'")
    return _BUILDERS[method]
