"""Which samples each job reads: calibration builds, tuning chooses, evaluation judges.

A choice made by looking at data (which nodes stay float, which tuning trial wins) fits the samples
it looked at; judged on those same samples, it passes by construction. So the fallback search and
inc's accuracy-aware tuning read the *tuning* split, and the gates judge on the *evaluation* split,
which no choice has seen. The three splits are disjoint by content (quant.data.sources).
Tuning on the evaluation split is possible only when asked for explicitly, and the results say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from quant.data.sources import SampleSource
from quant.errors import RecipeError
from quant.evaluate import Reference
from quant.recipe.schema import IncOptions, Recipe, StaticInt8Options

SplitName = Literal["tuning", "evaluation"]
TUNED_ON_EVALUATION = (
    "WARNING: tuned on the evaluation set (--allow-tuning-on-evaluation): the search chose on the samples the gates judge on, "
    "so its passes are optimistic; add a 'tuning' data set disjoint from 'evaluation'"
)


@dataclass(frozen=True)
class Split:
    """Samples with FP32's outputs on them: what a variant is judged on."""

    name: SplitName
    source: SampleSource
    reference: Reference


def choosing_variants(recipe: Recipe, names: tuple[str, ...]) -> list[str]:
    """Of `names`, the variants that make a choice from data (a fallback search, inc's tuning)."""
    return [
        name
        for name in names
        if (isinstance(v := recipe.variants[name], StaticInt8Options) and v.fallback is not None) or (isinstance(v, IncOptions) and v.tune)
    ]


def tuning_source(
    recipe: Recipe, names: tuple[str, ...], tuning: SampleSource | None, evaluation: SampleSource, allow_evaluation: bool, file: str
) -> tuple[SampleSource | None, bool]:
    """(the samples choices are made on, whether that is the evaluation set). Refuses, naming the field,
    a recipe whose variants choose from data with no tuning set, unless tuning on evaluation is allowed."""
    choosing = choosing_variants(recipe, names)
    if tuning is not None or not choosing:
        return tuning, False
    if allow_evaluation:
        return evaluation, True
    raise RecipeError(
        f"variant(s) {choosing} choose from data (fallback search or tune: true) and need a 'tuning' data set, disjoint from "
        "'evaluation', so the gates judge on samples the choice never saw; add one (same shape as 'evaluation'), "
        "or pass --allow-tuning-on-evaluation to tune on the evaluation set (the results then say so)",
        file=file,
        field="tuning",
    )
