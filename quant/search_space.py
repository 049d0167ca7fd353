"""What the fallback search may try beyond "which nodes stay float": variant-wide settings (calibration,
7/8-bit weights, per-channel, bias correction), per-tensor overrides on the most sensitive nodes, and blocks of consecutive
nodes as the unit kept in float. Pure functions of the options, the ranking and the float graph: the
search (quant.search) decides what to try, in which order, and judges it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from quant.machine import CpuFacts, eight_bit_weights_unsafe
from quant.recipe.schema import SearchCandidate, SensitiveOverrides, StaticInt8Options, TensorOverride
from quant.sensitivity import NodeSensitivity


@dataclass(frozen=True)
class Setting:
    """A variant-wide setting to try: the options it builds with, and what it changed from the recipe's."""

    options: StaticInt8Options
    changes: dict[str, object]


def settings_to_try(
    variant: StaticInt8Options, candidates: list[SearchCandidate], target: CpuFacts | None = None
) -> tuple[list[Setting], list[dict[str, object]]]:
    """The candidates as options (duplicates of the recipe's own setting dropped), and the ones skipped with why
    (8-bit u8 x s8 weights on an x86 CPU without VNNI would saturate): on `target`, the CPU measuring latency
    (default: this machine's)."""
    settings, skipped, seen = [], [], {_key(variant)}
    for candidate in candidates:
        changes = candidate.changes()
        options = variant.model_copy(update=changes)
        if _key(options) in seen:
            continue
        seen.add(_key(options))
        unsafe = eight_bit_weights_unsafe(options.activation_type, options.weight_type, target) if not options.reduce_range else None
        if unsafe:
            skipped.append({"changes": changes, "skipped": unsafe})
            continue
        settings.append(Setting(options, changes))
    return settings, skipped


def _key(options: StaticInt8Options) -> tuple[object, ...]:
    percentile = options.percentile if options.calibrate == "percentile" else None
    correction = options.bias_correction_error if options.bias_correction else None
    return (options.calibrate, percentile, options.reduce_range, options.per_channel, options.bias_correction, correction)


def graph_order(float_model: Path) -> list[str]:
    """Node names in the float graph's order (blocks are consecutive there)."""
    return [n.name for n in onnx.load(str(float_model), load_external_data=False).graph.node]


def units_of(ranking: list[NodeSensitivity], unit: str, block_size: int, order: list[str]) -> list[list[str]]:
    """What the search keeps in float, most sensitive first: single nodes, or blocks of `block_size`
    consecutive quantized nodes (graph order) ranked by their most sensitive member."""
    if unit == "node":
        return [[n.node] for n in ranking]
    position = {name: index for index, name in enumerate(order)}
    score = {n.node: n.added_error for n in ranking}
    in_order = sorted(score, key=lambda name: position.get(name, len(position)))
    blocks = [in_order[i : i + block_size] for i in range(0, len(in_order), block_size)]
    return sorted(blocks, key=lambda block: max(score[name] for name in block), reverse=True)


def sensitive_overrides(
    options: StaticInt8Options,
    ranking: list[NodeSensitivity],
    count: int,
    wanted: SensitiveOverrides,
    float_model: Path,
    target: CpuFacts | None = None,
) -> tuple[dict[str, TensorOverride], str | None]:
    """Per-tensor overrides for the `count` most sensitive nodes: their weights at the wanted bit width, their
    activation inputs calibrated another way. Returns (overrides, why the 8-bit weights were left out or None):
    8-bit weights only where `target`'s CPU (the one measuring latency; default: this machine's) adds in 32 bits."""
    nodes = {n.name: n for n in onnx.load(str(float_model), load_external_data=False).graph.node}
    initializers = {i.name for i in onnx.load(str(float_model), load_external_data=False).graph.initializer}
    unsafe = eight_bit_weights_unsafe(options.activation_type, options.weight_type, target) if wanted.weights_reduce_range is False else None
    overrides: dict[str, TensorOverride] = dict(options.tensor_overrides)
    for sensitive in ranking[:count]:
        node = nodes.get(sensitive.node)
        if node is None or len(node.input) < 2:
            continue
        activation, weight = node.input[0], node.input[1]
        if weight in initializers and wanted.weights_reduce_range is not None and not unsafe:
            overrides[weight] = TensorOverride(reduce_range=wanted.weights_reduce_range)
        if activation not in initializers and wanted.inputs_calibrate is not None:
            overrides[activation] = TensorOverride(calibrate=wanted.inputs_calibrate, percentile=wanted.inputs_percentile)
    return overrides, unsafe
