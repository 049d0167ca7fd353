"""Per-output statistics of a variant against the FP32 reference, accumulated one sample at a time."""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from quant.metrics.ctc import confidence_margins, edit_distance, greedy_decode, to_text
from quant.metrics.numeric import abs_errors, cosine, nonfinite_count, snr_db, top1_agreement
from quant.metrics.samples import Estimate, SampleParts, by_slice, estimates
from quant.recipe.schema import OutputSpec

MAX_MISMATCHES = 10  # examples kept for the report


def binary_iou(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> float:
    """IoU of the two maps binarised at `threshold`; a NaN pixel of the candidate is wrong whatever FP32 says there
    (in the union, never in the intersection)."""
    ref = reference > threshold
    cand = candidate > threshold  # NaN compares False: never in the intersection
    union = np.count_nonzero(ref | cand | np.isnan(candidate))
    return 1.0 if union == 0 else float(np.count_nonzero(ref & cand) / union)


@dataclass
class OutputComparison:
    """Running statistics for one output; `summary()` gives the metric values, `estimates()` their intervals."""

    spec: OutputSpec
    charset: list[str] | None = None
    cosines: list[float] = field(default_factory=list)
    snrs: list[float] = field(default_factory=list)
    max_abs: float = 0.0
    abs_sums: list[float] = field(default_factory=list)  # per sample, summed in sample order: shards merge to the same bits
    abs_count: int = 0
    nonfinite: int = 0
    ious: list[float] = field(default_factory=list)
    rows: list[SampleParts] = field(default_factory=list)  # per-sample parts of the ratio metrics
    mismatches: list[dict[str, str]] = field(default_factory=list)  # a few examples for the report

    @property
    def normalises(self) -> bool:
        return bool(self.charset and (self.spec.ignore_chars or self.spec.normalize))

    def normalised_text(self, sequence: tuple[int, ...]) -> str:
        """The decoded text as the `_norm` metrics compare it: normalised, ignored characters dropped."""
        assert self.charset is not None
        text = to_text(sequence, self.charset)
        if self.spec.normalize:
            text = unicodedata.normalize(self.spec.normalize, text)
        return "".join(c for c in text if c not in self.spec.ignore_chars)

    def add(self, sample_id: str, reference: np.ndarray, candidate: np.ndarray, label: str | None = None, slice: str | None = None) -> None:
        row = SampleParts(sample_id, slice)
        self.rows.append(row)
        self.cosines.append(cosine(reference, candidate))
        self.snrs.append(snr_db(reference, candidate))
        peak, mean = abs_errors(reference, candidate)
        self.max_abs = max(self.max_abs, peak)
        self.abs_sums.append(mean * max(reference.size, 1))
        self.abs_count += max(reference.size, 1)
        self.nonfinite += nonfinite_count(reference, candidate)
        kind = self.spec.kind
        if kind in ("classes", "ctc") and reference.shape == candidate.shape:
            row.add("top1_agreement", *top1_agreement(reference, candidate, self.spec.axis))
        if kind == "ctc":
            self._add_ctc(row, reference, candidate, label)
        if kind == "prob_map":
            iou = binary_iou(reference, candidate, self.spec.threshold) if reference.shape == candidate.shape else 0.0
            self.ious.append(iou)
            row.add("map_iou", iou, 1)

    def _add_ctc(self, row: SampleParts, reference: np.ndarray, candidate: np.ndarray, label: str | None) -> None:
        ref_seqs = greedy_decode(reference, self.spec.axis, self.spec.blank)
        cand_seqs = greedy_decode(candidate, self.spec.axis, self.spec.blank)
        margins = confidence_margins(reference, self.spec.axis)
        for ref_seq, cand_seq, margin in zip(ref_seqs, cand_seqs, margins):
            row.add("ctc_exact_match", ref_seq == cand_seq, 1)
            row.add("ctc_cer", edit_distance(ref_seq, cand_seq), max(len(ref_seq), 1))
            agrees = ref_seq == cand_seq
            if self.normalises:
                ref_norm, cand_norm = self.normalised_text(ref_seq), self.normalised_text(cand_seq)
                agrees = ref_norm == cand_norm
                row.add("ctc_exact_match_norm", agrees, 1)
                row.add("ctc_cer_norm", edit_distance(ref_norm, cand_norm), max(len(ref_norm), 1))
            # Agreement where FP32 was sure of its reading, apart from where it nearly read something else.
            row.add("ctc_exact_match_confident" if margin >= self.spec.confident_margin else "ctc_exact_match_unsure", agrees, 1)
            if ref_seq != cand_seq and len(self.mismatches) < MAX_MISMATCHES:
                decode = (lambda s: to_text(s, self.charset)) if self.charset else (lambda s: " ".join(map(str, s)))
                self.mismatches.append({"sample": row.id, "fp32": decode(ref_seq), "variant": decode(cand_seq)})
            if label is not None and self.charset is not None:
                reference_edits = edit_distance(to_text(ref_seq, self.charset), label)
                variant_edits = edit_distance(to_text(cand_seq, self.charset), label)
                length = max(len(label), 1)
                row.add("label_cer", variant_edits, length)
                row.add("label_cer_reference", reference_edits, length)
                row.add("label_cer_delta", variant_edits - reference_edits, length)
                row.add("label_exact_match", variant_edits == 0, 1)

    def estimates(self) -> dict[str, Estimate]:
        """Every ratio metric with its 95 % interval and sample count."""
        return estimates(self.rows)

    def slice_estimates(self) -> dict[str, dict[str, Estimate]]:
        """The ratio metrics of each slice of the samples (empty when the data names no slices)."""
        return {name: estimates(rows) for name, rows in by_slice(self.rows).items()}

    def summary(self) -> dict[str, float]:
        values: dict[str, float] = {
            "cosine": float(np.mean(self.cosines)) if self.cosines else math.nan,
            "cosine_min": float(np.min(self.cosines)) if self.cosines else math.nan,
            "max_abs": self.max_abs,
            "mean_abs": sum(self.abs_sums) / self.abs_count if self.abs_count else math.nan,
            "snr_db": float(np.mean(self.snrs)) if self.snrs else math.nan,
            "snr_db_min": float(np.min(self.snrs)) if self.snrs else math.nan,
            "nonfinite": float(self.nonfinite),
        }
        values.update({metric: e.value for metric, e in self.estimates().items()})
        if self.ious:
            values["map_iou_min"] = float(np.min(self.ious))
        return values

    def extend(self, later: OutputComparison) -> None:
        """Append the samples `later` compared, which come after this one's (an evaluation in shards, merged in order):
        the result is the comparison of all of them one after another, to the bit."""
        self.cosines += later.cosines
        self.snrs += later.snrs
        self.max_abs = max(self.max_abs, later.max_abs)
        self.abs_sums += later.abs_sums
        self.abs_count += later.abs_count
        self.nonfinite += later.nonfinite
        self.ious += later.ious
        self.rows += later.rows
        self.mismatches = (self.mismatches + later.mismatches)[:MAX_MISMATCHES]

    def distributions(self) -> dict[str, list[float]]:
        """Per-sample values, for the report's histograms."""
        series = {"cosine": self.cosines, "snr_db": self.snrs}
        if self.ious:
            series["map_iou"] = self.ious
        return {k: [round(v, 6) for v in vals] for k, vals in series.items()}


def by_slice_then_output(comparisons: dict[str, OutputComparison]) -> dict[str, dict[str, dict[str, Estimate]]]:
    """{slice: {output: {metric: estimate}}} over every output's samples (empty when no slices were named)."""
    table: dict[str, dict[str, dict[str, Estimate]]] = {}
    for output, comparison in comparisons.items():
        for slice_name, metrics in comparison.slice_estimates().items():
            table.setdefault(slice_name, {})[output] = metrics
    return dict(sorted(table.items()))
