"""What a metric is, in one place: its name, meaning, direction, which outputs produce it, how telling
it is, and how its interval is made. Everything else (gate validation, the recipe reference, the
per-kind lists, the summary's headline, the report's accuracy axis, the search's tracked metrics, the
comparison with the last release, the interval of each ratio metric) reads this table.

Adding a metric: one `Metric(...)` here and the code that computes it (`compare.OutputComparison` for a
per-output metric, `judge.judge_variant` for a variant-wide one). Nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

# The `kind` of a recipe's output (recipe.schema.OutputSpec.kind; a test keeps the two equal).
OUTPUT_KINDS = ("tensor", "classes", "ctc", "prob_map")
EVERY_KIND = OUTPUT_KINDS

# How a metric's 95 % interval is made (quant.intervals): "rate" for yes/no per sample (Wilson, or a
# bootstrap over samples when a sample holds several correlated positions), "bootstrap" for any other
# ratio of per-sample parts. None: no interval (a max, a count, a whole-run figure).
IntervalKind = Literal["rate", "bootstrap"]

# What an output (or the data) must have for a per-output metric to be produced at all; checked at
# --validate so a gate never waits for the end of a run to find its metric missing.
Need = Literal["charset", "normalisation", "labels"]


@dataclass(frozen=True)
class Metric:
    name: str
    doc: str
    lower_is_better: bool = False
    kinds: tuple[str, ...] = ()  # output kinds that produce it; () for a variant-wide metric (size, latency)
    headline: int | None = None  # rank among the metrics that sum a variant's accuracy up (1 first); None: not one
    interval: IntervalKind | None = None
    perfect: float | None = None  # its value when the variant's outputs equal FP32's, where that is a finite number
    gate: bool = True  # False: reported beside another metric, not a gate of its own
    needs: tuple[Need, ...] = ()
    timed: bool = False  # measured in timed rounds: its interval is over rounds, more are measured while undecided

    @property
    def variant_wide(self) -> bool:
        return not self.kinds


_NUMERIC = [
    Metric("cosine", "mean cosine similarity of each sample's output with FP32's (higher is better)", kinds=EVERY_KIND, headline=8, perfect=1.0),
    Metric("cosine_min", "worst per-sample cosine similarity", kinds=EVERY_KIND, perfect=1.0),
    Metric("max_abs", "largest absolute difference from FP32 over all samples", lower_is_better=True, kinds=EVERY_KIND, perfect=0.0),
    Metric("mean_abs", "mean absolute difference from FP32", lower_is_better=True, kinds=EVERY_KIND, perfect=0.0),
    Metric("snr_db", "mean signal-to-noise ratio vs FP32 in dB (identical outputs: 200, the cap)", kinds=EVERY_KIND, headline=9),
    Metric("snr_db_min", "worst per-sample SNR in dB", kinds=EVERY_KIND),
    Metric("nonfinite", "count of NaN/Inf values the variant produced where FP32 was finite", lower_is_better=True, kinds=EVERY_KIND, perfect=0.0),
]
_PER_KIND = [
    Metric(
        "top1_agreement",
        "fraction of positions whose argmax along `axis` equals FP32's (classes and ctc outputs)",
        kinds=("classes", "ctc"),
        headline=7,
        interval="rate",
        perfect=1.0,
    ),
    Metric(
        "ctc_exact_match",
        "fraction of samples whose greedy CTC decoding equals FP32's exactly",
        kinds=("ctc",),
        headline=2,
        interval="rate",
        perfect=1.0,
    ),
    Metric(
        "ctc_cer",
        "character (token) error rate of the greedy CTC decoding vs FP32's",
        lower_is_better=True,
        kinds=("ctc",),
        headline=4,
        interval="bootstrap",
        perfect=0.0,
    ),
    Metric(
        "ctc_exact_match_norm",
        "ctc_exact_match of the decoded texts after the output's `normalize` and `ignore_chars`",
        kinds=("ctc",),
        headline=1,
        interval="rate",
        perfect=1.0,
        needs=("charset", "normalisation"),
    ),
    Metric(
        "ctc_cer_norm",
        "character error rate of the decoded texts after the output's `normalize` and `ignore_chars`",
        lower_is_better=True,
        kinds=("ctc",),
        headline=5,
        interval="bootstrap",
        perfect=0.0,
        needs=("charset", "normalisation"),
    ),
    Metric(
        "ctc_exact_match_confident",
        "ctc_exact_match (the `_norm` comparison when the output normalises) on the lines FP32 reads with a "
        "probability margin of at least the output's `confident_margin` on every frame",
        kinds=("ctc",),
        interval="rate",
        perfect=1.0,
    ),
    Metric(
        "ctc_exact_match_unsure",
        "the same on the lines where FP32 itself nearly read something else (margin below `confident_margin`)",
        kinds=("ctc",),
        interval="rate",
        perfect=1.0,
    ),
    Metric(
        "label_cer",
        "character error rate vs the ground-truth labels (needs labels and a character list)",
        lower_is_better=True,
        kinds=("ctc",),
        interval="bootstrap",
        needs=("charset", "labels"),
    ),
    Metric(
        "label_cer_reference",
        "label_cer of FP32 itself (reported beside label_cer)",
        lower_is_better=True,
        kinds=("ctc",),
        interval="bootstrap",
        gate=False,
        needs=("charset", "labels"),
    ),
    Metric(
        "label_cer_delta",
        "label_cer of the variant minus label_cer of FP32",
        lower_is_better=True,
        kinds=("ctc",),
        headline=3,  # what a reader of the text feels, beside agreement with FP32
        interval="bootstrap",
        perfect=0.0,
        needs=("charset", "labels"),
    ),
    Metric(
        "label_exact_match",
        "fraction of lines the variant reads exactly as the ground-truth label (needs labels and a character list)",
        kinds=("ctc",),
        interval="rate",
        needs=("charset", "labels"),
    ),
    Metric(
        "map_iou",
        "mean IoU of the binarised probability map vs FP32's",
        kinds=("prob_map",),
        headline=6,
        interval="bootstrap",
        perfect=1.0,
    ),
    Metric("map_iou_min", "worst per-sample IoU of the binarised probability map", kinds=("prob_map",), perfect=1.0),
]
_VARIANT_WIDE = [
    Metric("size_ratio", "variant file size / FP32 file size", lower_is_better=True),
    Metric("latency_ratio", "variant / FP32 latency: typical ratio of interleaved rounds (Hodges-Lehmann)", lower_is_better=True, timed=True),
]
# Encoder–decoder families (quant.seq2seq.compare): greedy generation of the variant family vs the FP32
# family on the same images. Variant-wide: a family has no single output to name.
_GENERATION = [
    Metric(
        "seq_exact_match",
        "fraction of images whose greedily generated token sequence equals FP32's exactly",
        headline=10,
        interval="rate",
        perfect=1.0,
    ),
    Metric(
        "seq_cer_vs_fp32",
        "character error rate of the variant's generated text vs FP32's generated text",
        lower_is_better=True,
        headline=12,
        interval="bootstrap",
        perfect=0.0,
    ),
    Metric(
        "seq_label_cer",
        "character error rate of the variant's generated text vs the ground-truth labels",
        lower_is_better=True,
        interval="bootstrap",
        needs=("labels",),
    ),
    Metric(
        "seq_label_cer_reference",
        "seq_label_cer of FP32 itself (reported beside seq_label_cer)",
        lower_is_better=True,
        interval="bootstrap",
        gate=False,
        needs=("labels",),
    ),
    Metric(
        "seq_label_cer_delta",
        "seq_label_cer of the variant minus seq_label_cer of FP32",
        lower_is_better=True,
        headline=11,
        interval="bootstrap",
        perfect=0.0,
        needs=("labels",),
    ),
    Metric(
        "teacher_forced_top1",
        "fraction of FP32's decoding steps where the variant, fed FP32's tokens, picks FP32's token",
        headline=13,
        interval="rate",
        perfect=1.0,
    ),
    Metric(
        "teacher_forced_kl",
        "mean KL divergence (nats) of the variant's next-token distribution from FP32's, the variant fed FP32's tokens",
        lower_is_better=True,
        interval="bootstrap",
        perfect=0.0,
    ),
    Metric(
        "seq_early_divergence",
        "fraction of images whose generated tokens leave FP32's within the first k (compare's `early_tokens`, default 3)",
        lower_is_better=True,
        interval="rate",
        perfect=0.0,
    ),
    Metric(
        "first_divergence_median",
        "median 0-based position of the first token where the variant leaves FP32's sequence, over the images "
        "where it does (inf when none does)",
    ),
    Metric(
        "seq_unfinished",
        "fraction of images where the variant generated max_new_tokens without the end token (a looping decoder)",
        lower_is_better=True,
        interval="rate",
    ),
    Metric(
        "image_latency_ratio",
        "variant / FP32 time per image: encoder plus whole greedy generation (interleaved rounds, paired per round)",
        lower_is_better=True,
        timed=True,
    ),
    Metric(
        "token_latency_ratio",
        "variant / FP32 time per generated token, encoder included (interleaved rounds, paired per round)",
        lower_is_better=True,
        timed=True,
    ),
]

CATALOGUE: dict[str, Metric] = {m.name: m for m in (*_NUMERIC, *_PER_KIND, *_VARIANT_WIDE, *_GENERATION)}

# Derived views, for readers that want a plain sequence.
GATE_METRICS: tuple[str, ...] = tuple(name for name, m in CATALOGUE.items() if m.gate)
VARIANT_METRICS: tuple[str, ...] = tuple(name for name, m in CATALOGUE.items() if m.variant_wide)
HEADLINE_METRICS: tuple[str, ...] = tuple(m.name for m in sorted((m for m in CATALOGUE.values() if m.headline), key=lambda m: m.headline or 0))
INTERVAL_METRICS: tuple[str, ...] = tuple(name for name, m in CATALOGUE.items() if m.interval)
TIMED_METRICS: tuple[str, ...] = tuple(name for name, m in CATALOGUE.items() if m.timed)
GENERATION_METRICS: tuple[str, ...] = tuple(m.name for m in _GENERATION if not m.timed)


def kind_metrics(kind: str) -> tuple[str, ...]:
    """The metrics an output of this kind produces."""
    return tuple(name for name, m in CATALOGUE.items() if kind in m.kinds)


def lower_is_better(metric: str) -> bool:
    return CATALOGUE[metric].lower_is_better


def badness(metric: str, value: float) -> float:
    """Larger is worse, whatever the metric's direction; NaN is the worst of all."""
    if math.isnan(value):
        return math.inf
    return value if lower_is_better(metric) else -value


def worst(metric: str, values: Iterable[float | int | None]) -> float | None:
    """The worst of several values of one metric (e.g. over a variant's outputs); None when there is none.
    NaN counts as the worst of all."""
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return max(numbers, key=lambda v: badness(metric, v)) if numbers else None


def worst_over_outputs(metric: str, tables: Iterable[dict[str, float]]) -> float | None:
    """The worst value of `metric` over a variant's per-output metric tables."""
    return worst(metric, (table.get(metric) for table in tables))


def accuracy_axis(available: Iterable[str]) -> str | None:
    """The most telling accuracy metric among `available` that reads 1 when the variant equals FP32
    (the report plots it against latency with FP32 at (1, 1))."""
    present = set(available)
    return next((m for m in HEADLINE_METRICS if m in present and CATALOGUE[m].perfect == 1.0), None)
