"""A stateful model's variants judged closed-loop (fed their own state, as quant judges them) and
teacher-forced (fed FP32's state at every step), side by side, on the recipe's evaluation set.

    python benchmarks/closed_loop_vs_teacher.py --recipe recipes/examples/silero-vad.yaml \
        --variant runs/silero-vad/variants/int8-static.onnx --variant runs/silero-vad/variants/int8-dynamic.onnx

Prints, per variant and output, the recipe's gate metrics both ways: the gap is the error that builds up
through the state, which teacher forcing never shows. Accuracy only: nothing here is timed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from quant.checks import check_inputs
from quant.data.sources import inputs_signature
from quant.evaluate import evaluate_variant, run_reference
from quant.recipe.loader import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--variant", action="append", type=Path, required=True, help="a built variant (repeatable)")
    args = parser.parse_args()
    inputs = check_inputs(load_recipe(args.recipe))
    recipe, model = inputs.recipe, inputs.model
    if not recipe.state:
        raise SystemExit("the recipe declares no `state`: closed loop and teacher forcing are the same run")
    metrics = sorted({g.metric for g in recipe.gates if g.metric not in ("size_ratio", "latency_ratio")} | {"max_abs", "cosine_min"})
    with tempfile.TemporaryDirectory() as cache:
        reference = run_reference(
            model.path, model.sha256, inputs.evaluation, model.inputs, inputs_signature(recipe.inputs), Path(cache), 1, state=recipe.state
        )
        sequences = len({s.sequence for s in inputs.evaluation.samples})
        print(f"{recipe.name}: {sequences} sequences, {len(inputs.evaluation)} steps; state {recipe.state}")
        print("| variant | output | metric | closed-loop | teacher-forced |")
        print("|---|---|---|---|---|")
        for variant in args.variant:
            runs = {
                forced: evaluate_variant(variant, reference, inputs.evaluation, model.inputs, recipe.outputs, {}, 1, teacher_forced=forced)
                for forced in (False, True)
            }
            for output in recipe.outputs:
                looped, forced = runs[False][output].summary(), runs[True][output].summary()
                for metric in metrics:
                    if metric in looped:
                        print(f"| {variant.stem} | {output} | {metric} | {looped[metric]:.4g} | {forced[metric]:.4g} |")


if __name__ == "__main__":
    main()
