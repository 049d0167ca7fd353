"""Building one variant of a family: each part with its method, in a child process (quant.executor), into one
folder in the family's own layout; parts without a method are the FP32 files, copied unchanged."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quant.data.sources import SampleSource
from quant.executor import build_isolated
from quant.files import copy_model
from quant.methods.base import BuildContext
from quant.model import file_sha256, model_size
from quant.precision import nothing_quantized
from quant.recipe.family import ROLES, FamilyVariant
from quant.seq2seq.family import FamilyInfo

# Static INT8 of a decoder part needs calibration feeds captured from FP32 generation (quant.seq2seq.capture).
STATIC_DECODERS_SUPPORTED = False
FP32 = "fp32"  # what a part without a method is recorded as


@dataclass
class BuiltPart:
    """One part of a built variant: its file, the method it got and how the build went."""

    role: str
    path: Path
    method: str
    options: dict[str, Any] | None
    build: dict[str, Any] = field(default_factory=dict)
    unchanged: str | None = None  # the method quantized nothing in this part: why (quant.precision.nothing_quantized)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "method": self.method,
            "options": self.options,
            "sha256": file_sha256(self.path),
            "size_bytes": model_size(self.path),
            "build": self.build,
            "nothing_quantized": self.unchanged,
        }


@dataclass(frozen=True)
class FamilyBuild:
    """Where a variant's parts are built and what they may read."""

    family: FamilyInfo
    folder: Path  # the variant's parts, in the family's layout
    work_dir: Path
    cache_dir: Path
    calibration: SampleSource | None
    log: Callable[[str], None]  # a top-level function: it is pickled into each build's child process


def method_summary(parts: dict[str, BuiltPart]) -> str:
    """One word for the whole variant: its method when every quantized part has the same one, else them joined."""
    methods = sorted({p.method for p in parts.values() if p.method != FP32})
    return "+".join(methods) or FP32


def build_family_variant(variant: FamilyVariant, setup: FamilyBuild) -> dict[str, BuiltPart]:
    """Build every part that gets a method, copy the others; raises BuildError when a part's build fails."""
    shutil.rmtree(setup.folder, ignore_errors=True)  # an earlier run's files must not mix with these
    setup.folder.mkdir(parents=True)
    chosen = variant.resolved()
    built: dict[str, BuiltPart] = {}
    for role in ROLES:
        source = setup.family.parts[role]
        target = setup.folder / source.path.name
        options = chosen.get(role)
        if options is None:
            copy_model(source.path, target)
            built[role] = BuiltPart(role, target, FP32, None)
            continue
        work_dir = setup.work_dir / role
        work_dir.mkdir(parents=True, exist_ok=True)
        context = BuildContext(
            model_path=source.path,
            model_sha256=source.sha256,
            model_inputs=source.inputs,
            work_dir=work_dir,
            cache_dir=setup.cache_dir,
            calibration=setup.calibration if role == "encoder" else None,
            log=setup.log,
        )
        result = build_isolated(options, context, target)
        unchanged = nothing_quantized(options.method, source.path, result.path, getattr(options, "op_types", None))
        built[role] = BuiltPart(role, result.path, options.method, options.model_dump(mode="json", exclude={"gates"}), result.details, unchanged)
    return built
