"""Closed-loop runs of a recurrent or streaming model: each output named in the recipe's `state` feeds
its input at the next step of a sequence.

A variant is fed its OWN previous state, as it will be on a device. Fed FP32's state at every step
(teacher forcing) it only shows the error of one step; the error a variant builds up through its
state, step after step, is what closed-loop evaluation measures. Teacher forcing stays available
(`teacher`) to show the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from quant.data.feeds import checked_feeds
from quant.data.sources import Feeds, Sample, SampleSource
from quant.errors import DataError, RecipeError
from quant.model import Dims, ModelInfo, session

Outputs = dict[str, np.ndarray]


def closed_loop(
    samples: Iterable[tuple[Sample, Feeds]],
    state: Mapping[str, str],
    run: Callable[[Sample, Feeds], Outputs],
    teacher: Callable[[int], Outputs] | None = None,
) -> Iterator[tuple[int, Sample, Outputs]]:
    """Run every step; within a sequence, each `state` output of the previous step replaces its input
    (the model's own output, or `teacher(previous index)`'s when teacher-forced). A sequence's first
    step, and every sample without a sequence, is fed as stored."""
    previous: tuple[str | None, Outputs] = (None, {})
    for index, (sample, feeds) in enumerate(samples):
        sequence, carried = previous
        if state and sample.sequence is not None and sample.sequence == sequence:
            fed = teacher(index - 1) if teacher is not None else carried
            for output, input_name in state.items():
                value = fed[output]
                if value.shape != feeds[input_name].shape or value.dtype != feeds[input_name].dtype:
                    raise DataError(
                        f"output '{output}' ({value.dtype}{list(value.shape)}) cannot feed input '{input_name}' "
                        f"({feeds[input_name].dtype}{list(feeds[input_name].shape)}) at sample '{sample.id}'",
                        field=f"state.{output}",
                    )
                feeds[input_name] = value
        outputs = run(sample, feeds)
        previous = (sample.sequence, outputs)
        yield index, sample, outputs


def by_sequence(steps: Iterable[tuple[Sample, list[np.ndarray], list[np.ndarray]]]) -> Iterator[tuple[Sample, list[np.ndarray], list[np.ndarray]]]:
    """Steps (sample, FP32 outputs, variant outputs) grouped into one sample per sequence, each output
    stacked over the steps: the steps of one sequence are not independent samples."""
    group: list[tuple[Sample, list[np.ndarray], list[np.ndarray]]] = []

    def stacked() -> tuple[Sample, list[np.ndarray], list[np.ndarray]]:
        first = group[0][0]
        merged = Sample(id=f"sequence {first.sequence}", fingerprint=first.fingerprint, slice=first.slice, sequence=first.sequence)
        outputs = len(group[0][1])
        return merged, [np.stack([g[1][i] for g in group]) for i in range(outputs)], [np.stack([g[2][i] for g in group]) for i in range(outputs)]

    for step in steps:
        if group and step[0].sequence != group[0][0].sequence:
            yield stacked()
            group = []
        if step[0].sequence is None:  # not part of a sequence: a sample of its own
            yield step
        else:
            group.append(step)
    if group:
        yield stacked()


def _shapes_can_match(output: Dims, input_dims: Dims) -> bool:
    return len(output) == len(input_dims) and all(not isinstance(a, int) or not isinstance(b, int) or a == b for a, b in zip(output, input_dims))


def check_state(state: Mapping[str, str], model: ModelInfo, sources: Iterable[SampleSource], file: str) -> None:
    """The declared feedback names real outputs and inputs of matching shape, and the data comes in
    sequences; then one FP32 step on the first sample shows each output fits its input exactly."""
    if not state:
        return
    for output, input_name in state.items():
        field = f"state.{output}"
        if output not in model.outputs:
            raise RecipeError(f"the model has no output '{output}'; its outputs are {list(model.outputs)}", file=file, field=field)
        if input_name not in model.inputs:
            raise RecipeError(f"the model has no input '{input_name}'; its inputs are {list(model.inputs)}", file=file, field=field)
        if not _shapes_can_match(model.outputs[output], model.inputs[input_name]):
            raise RecipeError(
                f"output '{output}' {model.outputs[output]} cannot feed input '{input_name}' {model.inputs[input_name]}: the shapes differ",
                file=file,
                field=field,
            )
    checked = list(sources)
    for source in checked:
        if not any(sample.sequence is not None for sample in source.samples):
            raise RecipeError(
                f"'state' feeds outputs back step by step, so the {source.field} set needs sequences: an npz source with `sequence` "
                "(an array naming each row's sequence)",
                file=file,
                field=f"{source.field}.source.sequence",
            )
    _probe(state, model, checked[0], file)


def _probe(state: Mapping[str, str], model: ModelInfo, source: SampleSource, file: str) -> None:
    """One FP32 step: a fed-back output must have exactly the shape and type of the input it replaces."""
    sample, feeds = next(checked_feeds(source, model.inputs))
    outputs = dict(zip(list(state), session(model.path, threads=1).run(list(state), feeds)))
    for output, input_name in state.items():
        value, stored = outputs[output], feeds[input_name]
        if value.shape != stored.shape or value.dtype != stored.dtype:
            raise RecipeError(
                f"output '{output}' is {value.dtype}{list(value.shape)} on sample '{sample.id}' but input '{input_name}' is fed "
                f"{stored.dtype}{list(stored.shape)}: it cannot feed it",
                file=file,
                field=f"state.{output}",
            )
