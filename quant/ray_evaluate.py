"""A large evaluation in shards through Ray Data (with --executor ray).

The split's samples are cut into contiguous shards; `map_batches` hands each shard to a pool of actors of
`ShardEvaluator`, each of which builds the variant's onnxruntime session once (its intra-op threads set
explicitly to the recipe's bench.threads: onnxruntime ignores OMP_NUM_THREADS) and compares the shard's
outputs with FP32's stored ones (quant.evaluate.compare_samples, the serial code). The driver merges the
shards' comparisons in sample order (`OutputComparison.extend`), so the metrics and their intervals are the
serial evaluation's, to the bit. Every node reads the samples and the FP32 outputs from the shared paths.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import numpy as np

from quant.compare import OutputComparison
from quant.cores import windows
from quant.errors import BuildError, QuantError
from quant.evaluate import compare_samples, variant_session
from quant.shards import Evaluation, merged

MB = 1024 * 1024


class ShardEvaluator:
    """A Ray Data actor: one session for every shard it is handed."""

    def __init__(self, evaluation: Evaluation) -> None:
        self.evaluation = evaluation
        self.candidate = variant_session(evaluation.variant_path, evaluation.threads)  # intra_op_num_threads (quant.model.session)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        job, compared = self.evaluation, []
        for start, stop in zip(batch["start"].tolist(), batch["stop"].tolist()):
            shard = job.source.window(start, stop)
            comparisons = compare_samples(self.candidate, job.reference, shard, job.model_inputs, job.output_specs, job.charsets, start)
            compared.append(pickle.dumps(comparisons))
        return {"start": batch["start"], "comparisons": np.array(compared, dtype=object)}


def _quant_error_in(error: BaseException) -> QuantError | None:
    """The tool's own error (e.g. the variant fails to run on a sample) inside Ray Data's wrapping of it."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, QuantError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


def evaluate_in_shards(evaluation: Evaluation, *, shard_samples: int, memory_mb: int, actors: int) -> dict[str, OutputComparison]:
    """quant.evaluate.evaluate_variant's result, computed by up to `actors` Ray Data actors, `shard_samples` samples a shard."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    shards = [{"start": start, "stop": stop} for start, stop in windows(len(evaluation.source), shard_samples)]
    evaluated = ray.data.from_items(shards, override_num_blocks=len(shards)).map_batches(
        ShardEvaluator,
        batch_size=1,
        batch_format="numpy",
        fn_constructor_args=(evaluation,),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, min(actors, len(shards)))),
        num_cpus=evaluation.threads,
        memory=memory_mb * MB,
    )
    try:
        rows: list[dict[str, Any]] = sorted(evaluated.take_all(), key=lambda row: int(row["start"]))
    except Exception as error:
        raise _quant_error_in(error) or BuildError(f"the evaluation in shards failed: {str(error).strip().splitlines()[0][:300]}") from None
    return merged([pickle.loads(row["comparisons"]) for row in rows])
