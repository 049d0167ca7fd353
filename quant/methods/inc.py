"""Static INT8 by Intel Neural Compressor's ONNX Runtime line (`onnx-neural-compressor` 1.0, optional extra).

Plain static quantization, or INC's accuracy-aware tuning over op-type sets, scored against FP32 on a few
tuning samples (never the gates' evaluation set). The INC quirks worked around here are described in notes/inc-findings.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from quant.calibration.reader import CalibrationReader
from quant.data.feeds import checked_feeds
from quant.data.sources import Feeds, SampleSource
from quant.errors import BuildError
from quant.methods.base import BuildContext, BuildResult, register
from quant.methods.prepare import prepared_model
from quant.metrics.numeric import cosine
from quant.model import Dims, default_opset, save_model, session
from quant.precision import quantized_op_counts
from quant.recipe.schema import IncOptions

INSTALL_HINT = 'pip install -e ".[inc]" && pip install --no-deps onnx-neural-compressor==1.0'
TUNING_SAMPLES = 16  # enough to rank tuning candidates; the gates judge the chosen model on the held-out evaluation set
PROVIDER = "CPUExecutionProvider"
# Tuning narrows the quantized op types step by step: element-wise ops first (hard-swish and SE blocks
# lose most accuracy there), then everything but the weighted ops, then convolutions or matmuls alone.
ELEMENTWISE = {"Add", "Mul"}
WEIGHTED = {"Conv", "FusedConv", "MatMul", "Gemm", "Attention", "EmbedLayerNormalization"}
CONVOLUTIONS = {"Conv", "FusedConv"}
MATMULS = {"MatMul", "Gemm"}


# --------------------------------------------------------------------------- INC itself


def _require_inc() -> str:
    """Import INC (slow, optional) and quiet it; its version, or a BuildError saying how to install it."""
    # transformers (imported by INC) prints a "PyTorch was not found" advisory that does not concern us.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import onnx_neural_compressor.quantization  # noqa: F401  (also sets its logger up, at INFO)
    except ImportError as error:
        raise BuildError(f"the inc method needs onnx-neural-compressor ({error}); install it with: {INSTALL_HINT}") from None
    # Its own handler logs every config and op table at INFO (hundreds of lines).
    logging.getLogger("onnx_neural_compressor").setLevel(logging.WARNING)
    return version("onnx-neural-compressor")


@contextlib.contextmanager
def _inc_environment(folder: Path) -> Iterator[None]:
    """INC and onnxruntime make their temp dirs with `tempfile`: keep them under the variant's work_dir."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        with warnings.catch_warnings():
            # Bias quantization of dead channels (weights ~1e-15) casts inf to int32; harmless, and the gates judge the result.
            warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
            yield
    finally:
        tempfile.tempdir = previous


def _static_config(options: IncOptions, op_types: list[str] | None, samples: int, reader: CalibrationReader | None = None) -> Any:
    from onnx_neural_compressor.quantization import CalibrationMethod, QuantFormat, QuantType, config

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    return config.StaticQuantConfig(
        calibration_data_reader=reader,
        calibrate_method=CalibrationMethod.MinMax,  # streams min/max; Entropy/Percentile keep every activation in memory
        quant_format=QuantFormat.QDQ if options.format == "QDQ" else QuantFormat.QOperator,
        activation_type=types[options.activation_type],
        weight_type=types[options.weight_type],
        per_channel=options.per_channel,
        op_types_to_quantize=op_types,
        nodes_to_exclude=list(options.exclude_nodes),
        calibration_sampling_size=samples,  # INC's default (100) would silently ignore the rest of the set
        execution_provider=PROVIDER,
    )


def _default_op_types(quant_format: str) -> list[str]:
    from onnx_neural_compressor import constants

    table = constants.STATIC_QDQ_OP_LIST_MAP if quant_format == "QDQ" else constants.STATIC_QOPERATOR_OP_LIST_MAP
    return list(table[PROVIDER])


# --------------------------------------------------------------------------- model preparation


def _uniquely_named(source: Path, scratch: Path) -> tuple[Path, int]:
    """INC maps its configs by node name, so unnamed nodes (the opset converter adds some) all share one
    entry and crash it (`KeyError: 'Shape'`): give every node a unique name. Returns (model, nodes renamed)."""
    model = onnx.load(str(source))
    taken = {node.name for node in model.graph.node}
    seen: set[str] = set()
    renamed = 0
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            name = f"{node.op_type}_inc_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            renamed += 1
        seen.add(node.name)
    if not renamed:
        return source, 0
    target = scratch / "named.onnx"
    save_model(model, target)
    return target, renamed


def _check_per_channel(options: IncOptions, model_path: Path) -> None:
    """INC turns QDQ per-channel into per-tensor on opset < 13 with only a log line: refuse instead."""
    if options.format != "QDQ" or not options.per_channel:
        return
    model = onnx.load(str(model_path), load_external_data=False)
    opset = default_opset(model)
    if opset < 13:
        raise BuildError(
            f"QDQ with per_channel needs opset 13 or later, but the model is opset {opset} (INC would silently use per-tensor "
            "scales): set prepare.opset: 13, or per_channel: false, or format: QOperator"
        )


def _optimized_op_types(source: Path, scratch: Path) -> set[str]:
    """Op types of the graph INC really quantizes: its ORT_ENABLE_BASIC pre-pass fuses (Conv+BN, MatMul+Add -> Gemm)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(scratch / "optimized.onnx")
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.onnx_data")
    ort.InferenceSession(str(source), options, providers=[PROVIDER])
    model = onnx.load(str(scratch / "optimized.onnx"), load_external_data=False)
    return {node.op_type for node in model.graph.node}


def _single_file(model: onnx.ModelProto | Path, out_path: Path) -> None:
    """INC writes `<out>_data` beside anything >= 1 KB; the variant is one file (external data inline)."""
    save_model(model if isinstance(model, onnx.ModelProto) else onnx.load(str(model)), out_path)


# --------------------------------------------------------------------------- static


def _quantize_static(options: IncOptions, source: Path, reader: CalibrationReader, scratch: Path, out_path: Path) -> None:
    from onnx_neural_compressor.quantization import quantize

    if options.op_types == []:
        raise BuildError("op_types is empty: nothing to quantize (omit it for INC's default list)")
    target = scratch / "static.onnx"  # scratch is fresh: INC refuses to write over an earlier `<out>_data`
    try:
        quantize(str(source), str(target), _static_config(options, options.op_types, len(reader), reader))
    except SystemExit:  # INC exit()s when it finds nothing to quantize
        raise BuildError("Neural Compressor found nothing to quantize with these op_types / exclude_nodes") from None
    _single_file(target, out_path)


# --------------------------------------------------------------------------- tuning


class Scorer:
    """Higher is better: mean cosine vs FP32 over every output of a few tuning samples (FP32 run once)."""

    def __init__(self, fp32: Path, tuning: SampleSource, model_inputs: dict[str, Dims]) -> None:
        self.feeds: list[Feeds] = [feeds for _, feeds in checked_feeds(tuning, model_inputs)]
        reference = session(fp32)
        self.names = [o.name for o in reference.get_outputs()]
        self.references = [reference.run(self.names, feeds) for feeds in self.feeds]

    def __call__(self, model_path: Path) -> float:
        candidate = session(model_path)
        values = [
            cosine(ref, out)
            for feeds, refs in zip(self.feeds, self.references)
            for ref, out in zip(refs, candidate.run(self.names, feeds))
        ]
        return float(np.mean(values))


@dataclass
class TrialLog:
    """INC's eval_fn: its first call scores the FP32 baseline, every later one a trial, in config order.

    Records each trial, and keeps a single-file copy of the best-scoring one, since autotune returns
    the last trial (not the best) when it runs out of trials without meeting the goal."""

    scorer: Scorer
    labels: list[dict[str, Any]]
    best_path: Path
    log: Callable[[str], None]
    baseline: float | None = None
    baseline_error: str | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -math.inf
    best_trial: int | None = None

    def __call__(self, model_path: str) -> float:
        try:
            score, error = self.scorer(Path(model_path)), None
        except Exception as err:  # a candidate onnxruntime cannot run scores worst instead of ending the tuning
            score, error = 0.0, f"{type(err).__name__}: {str(err)[:200]}"
        if self.baseline is None:
            self.baseline, self.baseline_error = score, error
            return score
        number = len(self.trials) + 1
        label = self.labels[number - 1] if number <= len(self.labels) else {}
        record: dict[str, Any] = {"trial": number, **label, "score": round(score, 6), "quantized_ops": quantized_op_counts(Path(model_path))}
        if error:
            record["error"] = error
        self.trials.append(record)
        self.log(f"inc: trial {number}: score {score:.6f} (FP32 {self.baseline:.6f})" + (f", {error}" if error else ""))
        if error is None and score > self.best_score:
            self.best_score, self.best_trial = score, number
            _single_file(Path(model_path), self.best_path)
        return score


def _candidates(options: IncOptions, present: set[str]) -> list[list[str]]:
    """Op-type sets to try, most quantized first, each reduced to the types the graph has and distinct
    (INC silently skips a config equal to an earlier one, which would shift the trial labels)."""
    base = options.op_types if options.op_types is not None else _default_op_types(options.format)
    steps = [set(base), set(base) - ELEMENTWISE, set(base) & WEIGHTED, set(base) & CONVOLUTIONS, set(base) & MATMULS]
    result: list[list[str]] = []
    for step in steps:
        effective = sorted(step & present)
        if effective and effective not in result:
            result.append(effective)
    return result


def _tune(options: IncOptions, context: BuildContext, source: Path, reader: CalibrationReader, scratch: Path, out_path: Path) -> dict[str, Any]:
    from onnx_neural_compressor.quantization import tuning

    if context.tuning is None:
        raise BuildError("inc with tune: true needs tuning samples to score the trials")
    candidates = _candidates(options, _optimized_op_types(source, scratch))
    if not candidates:
        raise BuildError("none of the op types to quantize occur in the model")
    scorer = Scorer(context.model_path, context.tuning.subset(TUNING_SAMPLES), context.model_inputs)
    tracker = TrialLog(scorer, [{"op_types": c} for c in candidates], scratch / "best_trial.onnx", context.log)
    config_set = [_static_config(options, c, len(reader)) for c in candidates]
    tuning_config = tuning.TuningConfig(config_set=config_set, tolerable_loss=options.tolerable_loss, max_trials=options.max_trials)
    context.log(f"inc: tuning over {len(candidates)} op-type sets (at most {options.max_trials} trials)")
    try:
        returned = tuning.autotune(str(source), tuning_config, eval_fn=tracker, calibration_data_reader=reader)
    except SystemExit:  # INC exit()s when every config was tried and none met the goal
        returned = None
    if tracker.baseline is None or tracker.baseline_error is not None:
        raise BuildError(f"tuning could not score the FP32 baseline: {tracker.baseline_error}")
    goal = tracker.baseline * (1 - options.tolerable_loss)
    summary = {
        "eval_samples": len(scorer.feeds),
        "score": "mean cosine vs FP32 over every output",
        "baseline": round(tracker.baseline, 6),
        "goal": round(goal, 6),
    }
    return {**summary, "trials": tracker.trials, **_keep_result(returned, tracker, goal, out_path)}


def _keep_result(returned: onnx.ModelProto | None, tracker: TrialLog, goal: float, out_path: Path) -> dict[str, Any]:
    """Write autotune's model if it meets the goal, else the best-scoring trial; say which it was."""
    returned_summary, returned_score = None, -math.inf
    if returned is not None:
        # Re-scored: autotune also returns its last trial when max_trials ran out short of the goal.
        _single_file(returned, out_path)
        returned_score = tracker.scorer(out_path)
        returned_summary = {"trial": len(tracker.trials), "score": round(returned_score, 6)}
    if returned_score >= goal:
        chosen_trial, chosen_score = len(tracker.trials), returned_score
    elif tracker.best_trial is not None:
        chosen_trial, chosen_score = tracker.best_trial, tracker.best_score
        _single_file(tracker.best_path, out_path)
    else:
        raise BuildError("tuning produced no model onnxruntime could run: " + "; ".join(str(t.get("error")) for t in tracker.trials))
    return {
        "autotune_returned": returned_summary,
        "goal_met": chosen_score >= goal,
        "chosen_trial": chosen_trial,
        "chosen_score": round(chosen_score, 6),
    }


# --------------------------------------------------------------------------- entry point


@register("inc")
def build_inc(options: IncOptions, context: BuildContext, out_path: Path) -> BuildResult:
    inc_version = _require_inc()
    if context.calibration is None:
        raise BuildError("inc needs a calibration data set")
    prepared = prepared_model(context.model_path, context.model_sha256, options.prepare, context.cache_dir)
    calibration = context.calibration.subset(options.calibration_samples)
    reader = CalibrationReader(calibration, context.model_inputs)
    context.work_dir.mkdir(parents=True, exist_ok=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=context.work_dir, prefix="inc.") as scratch_dir, _inc_environment(Path(scratch_dir)):
        scratch = Path(scratch_dir)
        source, renamed = _uniquely_named(prepared, scratch)
        _check_per_channel(options, source)
        details: dict[str, Any] = {
            "engine": f"onnx-neural-compressor {inc_version}",
            "prepared_model": str(prepared),
            "renamed_nodes": renamed,
            "format": options.format,
            "per_channel": options.per_channel,
            "op_types": options.op_types if options.op_types is not None else "INC default list",
            "excluded_nodes": list(options.exclude_nodes),
            "calibration_samples": len(calibration),
            "calibrate_method": "minmax",
        }
        if options.tune:
            details["tuning"] = _tune(options, context, source, reader, scratch, out_path)
        else:
            context.log(f"inc: quantizing ({options.format}, {len(calibration)} calibration samples)")
            _quantize_static(options, source, reader, scratch, out_path)
    details["quantized_ops"] = quantized_op_counts(out_path)
    return BuildResult(out_path, details)
