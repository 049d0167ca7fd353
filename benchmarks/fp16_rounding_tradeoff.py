"""Size vs map IoU of FP16 builds that keep the top-k nodes of the weight-rounding ranking in FP32.

    python benchmarks/fp16_rounding_tradeoff.py --recipe recipes/examples/ppocrv5-det-fp16.yaml --ranking-samples 4 --keep 0,24,48,64,80,96

The ranking (quant.fp16.rounding) is measured on the first `--ranking-samples` tuning samples; each build is
quant's own FP16 build (normalised, onnxruntime's helper) with `keep_fp32` = the ranking's first k nodes, compared
with FP32 on every tuning and every evaluation sample (map IoU at the recipe's threshold: mean and worst page).
The tuning columns are what a repair may choose on; the evaluation columns are for the trade-off table only.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from quant.compare import binary_iou
from quant.data.feeds import checked_feeds
from quant.data.sources import SampleSource, open_source
from quant.fp16.normalise import normalised_model
from quant.fp16.rounding import rounding_costs
from quant.methods.base import BuildContext
from quant.methods.fp16 import build_fp16
from quant.model import inspect_model, locate, model_size, session
from quant.recipe.loader import load_recipe
from quant.recipe.schema import Fp16Options


def _maps(path: Path, feeds: list[dict[str, np.ndarray]], threads: int) -> list[np.ndarray]:
    runner = session(path, threads=threads)
    return [runner.run(None, feed)[0] for feed in feeds]


def _iou(reference: list[np.ndarray], candidate: list[np.ndarray], threshold: float) -> tuple[float, float]:
    values = [binary_iou(a, b, threshold) for a, b in zip(reference, candidate)]
    return float(np.mean(values)), float(np.min(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--ranking-samples", type=int, default=2)
    parser.add_argument("--keep", default="0,24,48,64,80,96", help="comma-separated k: the ranking's first k nodes kept in FP32")
    args = parser.parse_args()
    loaded = load_recipe(args.recipe)
    recipe = loaded.recipe
    assert recipe.tuning is not None, "the recipe needs a tuning set"
    output, spec = next((name, s) for name, s in recipe.outputs.items() if s.kind == "prob_map")
    info = inspect_model(locate(recipe.model, loaded.base_dir))
    names = list(info.inputs)
    tuning: SampleSource = open_source(recipe.tuning, loaded.base_dir, recipe.inputs, names, "tuning")
    evaluation = open_source(recipe.evaluation, loaded.base_dir, recipe.inputs, names, "evaluation")
    tune_feeds = [f for _, f in checked_feeds(tuning, info.inputs)]
    eval_feeds = [f for _, f in checked_feeds(evaluation, info.inputs)]
    threads = recipe.bench.threads
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        source = normalised_model(info.path, info.sha256, True, work)
        ranking_feeds = [f for _, f in checked_feeds(tuning.subset(args.ranking_samples), info.inputs)]
        ranked = [c.node for c in rounding_costs(source, ranking_feeds, set(), set()) if c.output_change > 0]
        tune_ref, eval_ref = _maps(source, tune_feeds, threads), _maps(source, eval_feeds, threads)
        context = BuildContext(info.path, info.sha256, info.inputs, work, work)
        print(f"{info.path.name}: {len(ranked)} weighted nodes ranked on {len(ranking_feeds)} tuning samples; {output} > {spec.threshold}")
        print("k | size ratio | tuning map IoU (worst) | evaluation map IoU (worst)")
        for k in (int(v) for v in args.keep.split(",")):
            built = build_fp16(Fp16Options(method="fp16", keep_fp32=ranked[:k]), context, work / f"k{k}.onnx").path
            tune_mean, tune_min = _iou(tune_ref, _maps(built, tune_feeds, threads), spec.threshold)
            eval_mean, eval_min = _iou(eval_ref, _maps(built, eval_feeds, threads), spec.threshold)
            size = model_size(built) / info.size_bytes
            print(f"{k} | {size:.3f} | {tune_mean:.5f} ({tune_min:.4f}) | {eval_mean:.5f} ({eval_min:.4f})", flush=True)


if __name__ == "__main__":
    main()
