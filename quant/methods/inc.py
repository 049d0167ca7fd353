"""Static INT8 by Intel Neural Compressor's ONNX Runtime line (optional extra)."""

from __future__ import annotations

from pathlib import Path

from quant.errors import BuildError
from quant.methods.base import BuildContext, BuildResult, register
from quant.recipe.schema import IncOptions


@register("inc")
def build_inc(options: IncOptions, context: BuildContext, out_path: Path) -> BuildResult:
    raise BuildError("the inc method is not available yet")
