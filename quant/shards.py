"""One evaluation in shards: contiguous windows of a stateless split, each compared with FP32 apart (its own
session), merged in sample order with `OutputComparison.extend`: the metrics and intervals of the whole split, to
the bit. Under `--jobs N` the local executor runs the shards (quant.cores.local_shard_samples) as units (two cores work on one large evaluation, and
a latency benchmark waiting for the machine waits for one shard, not a whole evaluation); with Ray, Ray Data runs
them on a pool of actors (quant.ray_evaluate). A closed-loop split (the reference's `state`) stays whole: its
samples are not independent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from quant.compare import OutputComparison
from quant.data.sources import SampleSource
from quant.evaluate import Reference, compare_samples, evaluate_variant, variant_session
from quant.model import Dims
from quant.recipe.schema import OutputSpec


class Evaluation(NamedTuple):
    """quant.evaluate.evaluate_variant's arguments, in its order: the unit this module runs in shards."""

    variant_path: Path
    reference: Reference
    source: SampleSource
    model_inputs: dict[str, Dims]
    output_specs: dict[str, OutputSpec]
    charsets: dict[str, list[str]]
    threads: int


def as_evaluation(unit: Callable[..., Any], args: tuple[Any, ...]) -> Evaluation | None:
    """The evaluation a unit call is, when it may go in shards: evaluate_variant on a stateless split (no teacher forcing)."""
    if unit is not evaluate_variant or len(args) != len(Evaluation._fields):
        return None
    evaluation = Evaluation(*args)
    return None if evaluation.reference.state else evaluation


def evaluate_window(evaluation: Evaluation, start: int, stop: int) -> dict[str, OutputComparison]:
    """A unit: the comparison of samples start..stop-1, with a session of its own."""
    candidate = variant_session(evaluation.variant_path, evaluation.threads)
    shard = evaluation.source.window(start, stop)
    return compare_samples(candidate, evaluation.reference, shard, evaluation.model_inputs, evaluation.output_specs, evaluation.charsets, start)


def merged(shards: Sequence[dict[str, OutputComparison]]) -> dict[str, OutputComparison]:
    """The shards' comparisons, in sample order, as one (the first shard's objects, extended)."""
    whole = shards[0]
    for shard in shards[1:]:
        for name, comparison in shard.items():
            whole[name].extend(comparison)
    return whole
