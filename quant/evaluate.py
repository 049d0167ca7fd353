"""Running models on the evaluation set: FP32 once (outputs cached on disk), then each variant against it.
With a recipe `state`, both run closed-loop over each sequence (quant.stateful)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from quant.compare import OutputComparison
from quant.data.feeds import checked_feeds
from quant.data.sources import Feeds, Sample, SampleSource
from quant.errors import BuildError, DataError, ModelError
from quant.files import remove_abandoned
from quant.model import Dims, session
from quant.recipe.schema import OutputSpec
from quant.stateful import by_sequence, closed_loop
from quant.testpoint import pause_point

InWindows = Callable[[Callable[[int, int], None], int], None]  # (fill(start, stop), sample count): fill every window


@dataclass(frozen=True)
class Reference:
    """Where the FP32 outputs of every evaluation sample are stored, one .npz per sample."""

    folder: Path
    output_names: list[str]
    seconds: float
    cache_hit: bool
    state: dict[str, str] = field(default_factory=dict)  # output -> input fed back within a sequence (closed loop)


def _reference_key(model_sha256: str, source: SampleSource, inputs_signature: str, state: dict[str, str]) -> str:
    text = f"{model_sha256}|{source.fingerprint}|{inputs_signature}|{json.dumps(state, sort_keys=True) if state else ''}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def run_reference(
    model_path: Path,
    model_sha256: str,
    source: SampleSource,
    model_inputs: dict[str, Dims],
    inputs_signature: str,
    cache_dir: Path,
    threads: int,
    progress: Callable[[int], None] | None = None,
    state: dict[str, str] | None = None,
    in_windows: InWindows | None = None,
) -> Reference:
    """FP32 outputs for every evaluation sample, computed once and kept on disk (bounded memory); with
    `state`, each sequence closed-loop on FP32's own state. `in_windows(fill, count)` (the executor's) calls
    `fill(start, stop)` over windows covering the samples, side by side; each window writes its own samples' files
    with a session of its own (a stateless split only: a closed loop runs whole, here)."""
    state = dict(state or {})
    folder = cache_dir / "reference" / _reference_key(model_sha256, source, inputs_signature, state)
    try:
        fp32 = session(model_path, threads=threads)
    except Exception as error:  # onnxruntime's own exception types: the model passed the checker but cannot run
        raise ModelError(
            f"onnxruntime cannot load the model: {str(error).strip().splitlines()[0][:300]}", file=str(model_path), field="model.path"
        ) from None
    names = [o.name for o in fp32.get_outputs()]
    if (folder / "complete").is_file():
        return Reference(folder, names, 0.0, True, state)
    # Left by a killed run: never complete, never used.
    remove_abandoned(folder.parent.glob(f"{folder.name}.tmp*"), lambda name: name.rsplit(".tmp", 1)[-1])
    scratch = folder.with_name(folder.name + f".tmp{os.getpid()}")
    quiet_run = ort.RunOptions()
    quiet_run.log_severity_level = 4  # a failing sample is reported once, as a DataError, not also in onnxruntime's log
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    counted, count_lock = [0], threading.Lock()

    def fill(start: int, stop: int) -> None:
        whole = (start, stop) == (0, len(source))
        own = fp32 if whole else session(model_path, threads=threads)  # a window: its own session

        def run(sample: Sample, feeds: Feeds) -> dict[str, np.ndarray]:
            try:
                return dict(zip(names, own.run(names, feeds, quiet_run)))
            except Exception as error:  # fits the declared dims, but the graph cannot run it (e.g. a Reshape)
                detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
                raise DataError(
                    f"the FP32 model fails on sample '{sample.id}': {detail}", file=source.where, field=f"{source.field}.source"
                ) from None

        for index, sample, outputs in closed_loop(checked_feeds(source if whole else source.window(start, stop), model_inputs), state, run):
            np.savez(scratch / f"{start + index:06d}.npz", **{f"o{i}": outputs[name] for i, name in enumerate(names)})
            with count_lock:
                counted[0] += 1
                if progress:
                    progress(counted[0])
            if start + index == 0:
                pause_point("reference")

    if in_windows is None or state:
        fill(0, len(source))
    else:
        in_windows(fill, len(source))
    (scratch / "complete").write_text(source.fingerprint)
    if folder.exists():  # another run finished first; theirs is as good as ours
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        os.replace(scratch, folder)
    return Reference(folder, names, time.perf_counter() - started, False, state)


def reference_outputs(reference: Reference, index: int) -> list[np.ndarray]:
    with np.load(reference.folder / f"{index:06d}.npz") as stored:
        return [stored[f"o{i}"] for i in range(len(reference.output_names))]


def evaluate_variant(
    variant_path: Path,
    reference: Reference,
    source: SampleSource,
    model_inputs: dict[str, Dims],
    output_specs: dict[str, OutputSpec],
    charsets: dict[str, list[str]],
    threads: int,
    teacher_forced: bool = False,
) -> dict[str, OutputComparison]:
    """Run the variant on every evaluation sample and compare each output with FP32's. With the reference's
    `state`, the variant runs each sequence closed-loop on its own state (or on FP32's, `teacher_forced`,
    which shows one step's error only) and each sequence is one sample of the comparison."""
    candidate = variant_session(variant_path, threads)
    return compare_samples(candidate, reference, source, model_inputs, output_specs, charsets, teacher_forced=teacher_forced)


def variant_session(variant_path: Path, threads: int) -> ort.InferenceSession:
    try:
        return session(variant_path, threads=threads)
    except Exception as error:  # onnxruntime raises its own exception types for unloadable models
        raise BuildError(f"the variant does not load in onnxruntime: {str(error).splitlines()[0][:300]}") from None


def compare_samples(
    candidate: ort.InferenceSession,
    reference: Reference,
    source: SampleSource,
    model_inputs: dict[str, Dims],
    output_specs: dict[str, OutputSpec],
    charsets: dict[str, list[str]],
    start: int = 0,
    teacher_forced: bool = False,
) -> dict[str, OutputComparison]:
    """Compare the variant's outputs with FP32's on `source`, whose first sample is the split's sample `start`
    (a shard of a stateless split: `SampleSource.window`); shards compared in order and merged with
    `OutputComparison.extend` give the comparison of the whole split."""
    comparisons = {name: OutputComparison(output_specs.get(name, OutputSpec()), charsets.get(name)) for name in reference.output_names}
    names = reference.output_names

    def run(sample: Sample, feeds: Feeds) -> dict[str, np.ndarray]:
        try:
            return dict(zip(names, candidate.run(names, feeds)))
        except Exception as error:
            raise BuildError(f"the variant fails to run on '{sample.id}': {str(error).splitlines()[0][:300]}") from None

    def teacher(index: int) -> dict[str, np.ndarray]:
        return dict(zip(names, reference_outputs(reference, start + index)))

    def steps() -> Iterator[tuple[Sample, list[np.ndarray], list[np.ndarray]]]:
        looped = closed_loop(checked_feeds(source, model_inputs), reference.state, run, teacher if teacher_forced else None)
        for index, sample, outputs in looped:
            yield sample, reference_outputs(reference, start + index), [outputs[name] for name in names]
            if start + index == 0:
                pause_point("evaluation")

    for sample, expected_outputs, actual_outputs in by_sequence(steps()) if reference.state else steps():
        for name, expected, actual in zip(names, expected_outputs, actual_outputs):
            comparisons[name].add(sample.id, expected, actual, sample.label, sample.slice)
    return comparisons
