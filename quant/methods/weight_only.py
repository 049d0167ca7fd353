"""Weight-only int4/int8 with onnxruntime's MatMulNBitsQuantizer (MatMul -> MatMulNBits).

The quantizer takes one bits/block setting per call, so per-node overrides (the LM head at 8 bits)
are applied in passes: one pass per distinct setting, each quantizing only its own nodes (every
other MatMul is excluded for that pass). A node already turned into MatMulNBits is no MatMul for
the next pass, so no node is quantized twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from quant.errors import RecipeError
from quant.methods.base import BuildContext, BuildResult, register
from quant.methods.prepare import prepared_model
from quant.model import load_proto, save_model
from quant.precision import quantized_op_counts
from quant.recipe.schema import WeightOnlyOptions

if TYPE_CHECKING:
    from onnxruntime.quantization.matmul_nbits_quantizer import WeightOnlyQuantConfig

Setting = tuple[int, int]  # bits, block size
QUIET_LOGGERS = ("onnxruntime.quantization.matmul_nbits_quantizer", "neural_compressor")


def _matmul_names(model: onnx.ModelProto) -> set[str]:
    return {node.name for node in model.graph.node if node.op_type == "MatMul"}


def _name_unnamed_matmuls(model: onnx.ModelProto) -> None:
    """Passes select nodes by name: an unnamed MatMul could not be kept out of an override's pass."""
    taken = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if node.op_type == "MatMul" and not node.name:
            node.name = f"MatMul_unnamed_{index}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)


def _groups(options: WeightOnlyOptions, matmuls: set[str]) -> dict[Setting, set[str]]:
    """Node names per (bits, block size); the variant's own setting last, for everything not named."""
    unknown = sorted((set(options.exclude_nodes) | set(options.overrides)) - matmuls)
    if unknown:
        field = "overrides" if set(unknown) & set(options.overrides) else "exclude_nodes"
        raise RecipeError(f"no MatMul node named {unknown} in the model", field=field)
    groups: dict[Setting, set[str]] = {}
    for name, override in options.overrides.items():
        groups.setdefault((override.bits, override.block_size or options.block_size), set()).add(name)
    named = set(options.exclude_nodes) | set(options.overrides)
    default = (options.bits, options.block_size)
    # Dict order is pass order: overrides first, so the last pass is the variant's own setting.
    rest = groups.pop(default, set()) | (matmuls - named)
    groups[default] = rest
    return groups


def _algo_config(options: WeightOnlyOptions, setting: Setting, nodes: set[str]) -> WeightOnlyQuantConfig:
    # Imported here, in the build process: the module calls logging.basicConfig(INFO) at import.
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        KQuantWeightOnlyQuantConfig,
        RTNWeightOnlyQuantConfig,
    )

    bits, block_size = setting
    if options.algorithm == "default":
        return DefaultWeightOnlyQuantConfig(
            block_size=block_size, is_symmetric=options.symmetric, accuracy_level=options.accuracy_level or None, bits=bits
        )
    if options.algorithm == "hqq":
        try:
            import torch  # noqa: F401  (onnxruntime's HQQ runs on PyTorch)
        except ImportError:
            raise RecipeError("algorithm hqq needs PyTorch, which quant does not install (pip install torch)", field="algorithm") from None
        return HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits)
    # Neural Compressor's RTN and k-quant take bits and block size per node only.
    scheme = "sym" if options.symmetric else "asym"
    per_node = {name: {"bits": bits, "group_size": block_size, "scheme": scheme} for name in nodes}
    config_class = RTNWeightOnlyQuantConfig if options.algorithm == "rtn" else KQuantWeightOnlyQuantConfig
    return config_class(customized_weight_config=per_node)


def _quantize_pass(model: onnx.ModelProto, options: WeightOnlyOptions, setting: Setting, nodes: set[str]) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    bits, block_size = setting
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=options.symmetric,
        accuracy_level=options.accuracy_level or None,
        nodes_to_exclude=sorted(_matmul_names(model) - nodes),
        algo_config=_algo_config(options, setting, nodes),
    )
    quantizer.process()
    return quantizer.model.model


def nbits_counts(model: onnx.ModelProto) -> dict[str, int]:
    """MatMulNBits nodes per `bits=B block=N` and the MatMuls left in float."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            key = f"bits={attrs['bits']} block={attrs['block_size']}"
            counts[key] = counts.get(key, 0) + 1
        elif node.op_type == "MatMul":
            counts["float MatMul"] = counts.get("float MatMul", 0) + 1
    return counts


@register("weight_only")
def build_weight_only(options: WeightOnlyOptions, context: BuildContext, out_path: Path) -> BuildResult:
    source = prepared_model(context.model_path, context.model_sha256, options.prepare, context.cache_dir)
    for name in QUIET_LOGGERS:  # a line per node at INFO otherwise (the module calls basicConfig at import)
        logging.getLogger(name).setLevel(logging.WARNING)
    model = load_proto(source)
    _name_unnamed_matmuls(model)
    groups = _groups(options, _matmul_names(model))
    for setting, nodes in groups.items():
        if nodes:
            model = _quantize_pass(model, options, setting, nodes)
    save_model(model, out_path)
    # A model with no MatMul weight to quantize comes out unchanged: the runner's nothing_quantized verdict says so.
    details = {"prepared_model": str(source), "matmul_nbits": nbits_counts(model), "quantized_ops": quantized_op_counts(out_path)}
    return BuildResult(out_path, details)
