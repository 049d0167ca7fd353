"""Generation gates: a variant family's greedy text vs the FP32 family's, on the same images.

Interface (for the runner / recipe wiring):

    from quant.seq2seq.compare import compare_generation, reference_generations
    from quant.seq2seq.vocabulary import Vocabulary
    fp32 = reference_generations(fp32_family, encoder_feeds, config)      # once per recipe, reused per variant
    result = compare_generation(fp32, variant_family, encoder_feeds, config, Vocabulary.from_file(vocab_json),
                                labels=labels_or_None, ids=sample_ids_or_None)
    variant_metrics.update(result.metrics())       # seq_exact_match, seq_cer_vs_fp32, seq_label_cer(_delta),
    intervals[""].update(result.intervals())       # teacher_forced_top1/_kl, seq_early_divergence,
                                                   # first_divergence_median, seq_unfinished
    # then gates.judge_all(...) as for any variant-wide metric (catalogue: quant/metrics/catalogue.py)

`reference` may also be the FP32 `Family` itself (generated here then). Latency per image and per
token: quant.seq2seq.latency.family_latency; building one part with a method: quant.seq2seq.parts.

What is measured per image (all in the catalogue, each with its sample count and 95 % interval):
- the sequences equal exactly (Wilson); CER of the variant's text vs FP32's text (bootstrap over images);
- with labels: CER of both vs the labels and the variant-minus-FP32 delta (bootstrap, paired per image);
- where the variant's tokens first leave FP32's (median over diverging images; share leaving in the first k);
- teacher forcing: the variant fed FP32's tokens, per step top-1 agreement with FP32 and KL(FP32 || variant)
  of the next-token distributions (a bootstrap over images: the steps of one line are not independent).
FP32's per-step logits are kept for the KL: memory is images x steps x vocabulary floats.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from quant.intervals import Interval
from quant.metrics.ctc import edit_distance
from quant.metrics.samples import Estimate, SampleParts, estimates
from quant.seq2seq.generate import Family, Feeds, Generation, GenerationConfig, generate
from quant.seq2seq.vocabulary import Vocabulary

EARLY_TOKENS = 3


def reference_generations(reference: Family, samples: Iterable[Feeds], config: GenerationConfig) -> list[Generation]:
    """FP32's greedy generation of every sample (with its per-step logits), to compare every variant with."""
    return [generate(reference, feeds, config) for feeds in samples]


def _sequence(generation: Generation, config: GenerationConfig) -> list[int]:
    """The generated tokens with the end token when it was produced: stopping is part of the sequence."""
    return [*generation.tokens, config.end_token] if generation.finished else list(generation.tokens)


def first_divergence(reference: Sequence[int], variant: Sequence[int]) -> int | None:
    """0-based position of the first token where the two sequences differ (a prefix ends there); None if equal."""
    for position, (a, b) in enumerate(zip(reference, variant)):
        if a != b:
            return position
    return None if len(reference) == len(variant) else min(len(reference), len(variant))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - np.max(logits, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def teacher_forced_scores(reference: Generation, forced: Generation) -> tuple[int, int, float]:
    """(steps where the variant's top-1 is FP32's, steps, summed KL(FP32 || variant) in nats) over FP32's steps.

    `forced` is the variant run with forced_tokens = FP32's tokens: its step i saw the same prefix as FP32's step i."""
    steps = len(reference.step_logits)
    if steps == 0:
        return 0, 0, 0.0
    ref = np.stack(reference.step_logits)
    var = np.stack(forced.step_logits[:steps])
    agree = int(np.sum(np.argmax(ref, axis=-1) == np.argmax(var, axis=-1)))
    log_p, log_q = _log_softmax(ref), _log_softmax(var)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
    # A variant putting zero probability where FP32 puts some has infinite KL: kept, it is a broken variant.
    return agree, steps, float(np.sum(np.where(np.isnan(kl), np.inf, kl)))


def _teacher_forced(variant: Family, feeds: Feeds, config: GenerationConfig, reference: Generation, free: Generation) -> Generation:
    """The variant fed FP32's tokens. When its own greedy run chose exactly FP32's tokens, that run already was
    fed them, step for step: its logits are reused instead of generating again."""
    if free.tokens == reference.tokens and free.finished == reference.finished:
        return free
    return generate(variant, feeds, config, forced_tokens=reference.tokens)


@dataclass(frozen=True)
class LineComparison:
    """One image: both texts, the label, and where the variant left FP32's tokens."""

    id: str
    reference_text: str
    variant_text: str
    label: str | None
    first_divergence: int | None  # None: the same sequence
    variant_finished: bool

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class GenerationComparison:
    early_tokens: int = EARLY_TOKENS
    lines: list[LineComparison] = field(default_factory=list)
    rows: list[SampleParts] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return len(self.lines)

    def divergences(self) -> list[int]:
        return [line.first_divergence for line in self.lines if line.first_divergence is not None]

    def first_divergence_median(self) -> float:
        """Median first divergent position over the images whose sequence differs; inf when none does."""
        positions = self.divergences()
        return float(statistics.median(positions)) if positions else math.inf

    def estimates(self) -> dict[str, Estimate]:
        """Every ratio metric with its 95 % interval (rates: Wilson; CER, KL, deltas: bootstrap over images)."""
        return estimates(self.rows)

    def metrics(self) -> dict[str, float]:
        values = {name: e.value for name, e in self.estimates().items()}
        values["first_divergence_median"] = self.first_divergence_median()
        return values

    def intervals(self) -> dict[str, Interval]:
        return {name: e.interval for name, e in self.estimates().items()}

    def mismatches(self, limit: int = 10) -> list[LineComparison]:
        """The first `limit` images whose text differs from FP32's."""
        return [line for line in self.lines if line.first_divergence is not None][:limit]

    def to_dict(self, examples: int = 10) -> dict[str, object]:
        """JSON-ready: every metric with its interval and sample count, where lines diverge, the first mismatches."""
        median = self.first_divergence_median()
        return {
            "samples": self.samples,
            "metrics": {name: e.to_dict() for name, e in self.estimates().items()},
            "first_divergence_median": median if math.isfinite(median) else None,
            "first_divergence": self.divergence_summary(),
            "mismatches": [line.to_dict() for line in self.mismatches(examples)],
        }

    def divergence_summary(self) -> dict[str, object]:
        positions = self.divergences()
        return {
            "images": self.samples,
            "diverging": len(positions),
            "median": self.first_divergence_median() if positions else None,
            f"within_first_{self.early_tokens}": sum(p < self.early_tokens for p in positions),
            "positions": sorted(positions),
        }


def _parts(
    sample_id: str,
    reference: Generation,
    variant: Generation,
    forced: Generation | None,
    config: GenerationConfig,
    vocabulary: Vocabulary,
    label: str | None,
    early_tokens: int,
) -> tuple[LineComparison, SampleParts]:
    ref_text, var_text = vocabulary.decode(reference.tokens), vocabulary.decode(variant.tokens)
    divergence = first_divergence(_sequence(reference, config), _sequence(variant, config))
    row = SampleParts(sample_id)
    row.add("seq_exact_match", divergence is None, 1)
    row.add("seq_cer_vs_fp32", edit_distance(var_text, ref_text), len(ref_text))
    row.add("seq_early_divergence", divergence is not None and divergence < early_tokens, 1)
    row.add("seq_unfinished", not variant.finished, 1)
    if label is not None:
        variant_edits, reference_edits = edit_distance(var_text, label), edit_distance(ref_text, label)
        row.add("seq_label_cer", variant_edits, len(label))
        row.add("seq_label_cer_reference", reference_edits, len(label))
        row.add("seq_label_cer_delta", variant_edits - reference_edits, len(label))
    if forced is not None:
        agree, steps, kl = teacher_forced_scores(reference, forced)
        row.add("teacher_forced_top1", agree, steps)
        row.add("teacher_forced_kl", kl, steps)
    return LineComparison(sample_id, ref_text, var_text, label, divergence, variant.finished), row


def compare_generation(
    reference: Family | Sequence[Generation],
    variant: Family,
    samples: Iterable[Feeds],
    config: GenerationConfig,
    vocabulary: Vocabulary,
    labels: Sequence[str | None] | None = None,
    ids: Sequence[str] | None = None,
    *,
    teacher_forced: bool = True,
    early_tokens: int = EARLY_TOKENS,
) -> GenerationComparison:
    """Greedy generation with `variant` vs FP32 (`reference`: its family, or its generations of these samples)
    on every sample's encoder feeds, streamed one image at a time."""
    result = GenerationComparison(early_tokens=early_tokens)
    stored = None if isinstance(reference, Family) else list(reference)
    for index, feeds in enumerate(samples):
        if stored is not None:
            if index >= len(stored):
                raise ValueError(f"more samples than the {len(stored)} FP32 generations given")
            ref = stored[index]
        else:
            ref = generate(reference, feeds, config)  # type: ignore[arg-type]
        var = generate(variant, feeds, config)
        forced = _teacher_forced(variant, feeds, config, ref, var) if teacher_forced else None
        for given, what in ((labels, "labels"), (ids, "ids")):
            if given is not None and index >= len(given):
                raise ValueError(f"more samples than the {len(given)} {what} given")
        label = labels[index] if labels is not None else None
        sample_id = ids[index] if ids is not None else str(index)
        line, row = _parts(sample_id, ref, var, forced, config, vocabulary, label, early_tokens)
        result.lines.append(line)
        result.rows.append(row)
    if stored is not None and len(result.lines) != len(stored):
        raise ValueError(f"{len(result.lines)} samples for {len(stored)} FP32 generations")
    return result
