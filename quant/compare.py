"""Per-output statistics of a variant against the FP32 reference, accumulated one sample at a time."""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from quant.metrics.ctc import edit_distance, greedy_decode, to_text
from quant.metrics.numeric import abs_errors, cosine, nonfinite_count, snr_db, top1_agreement
from quant.recipe.schema import OutputSpec

# Which metrics each output kind produces (numeric ones apply to every kind).
NUMERIC = ("cosine", "cosine_min", "max_abs", "mean_abs", "snr_db", "snr_db_min", "nonfinite")
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "tensor": NUMERIC,
    "classes": (*NUMERIC, "top1_agreement"),
    "ctc": (*NUMERIC, "top1_agreement", "ctc_exact_match", "ctc_cer", "ctc_exact_match_norm", "ctc_cer_norm", "label_cer", "label_cer_delta"),
    "prob_map": (*NUMERIC, "map_iou", "map_iou_min"),
}


def binary_iou(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> float:
    ref = reference > threshold
    cand = np.nan_to_num(candidate, nan=0.0) > threshold
    union = np.count_nonzero(ref | cand)
    return 1.0 if union == 0 else float(np.count_nonzero(ref & cand) / union)


@dataclass
class OutputComparison:
    """Running statistics for one output; `summary()` gives the metric values."""

    spec: OutputSpec
    charset: list[str] | None = None
    cosines: list[float] = field(default_factory=list)
    snrs: list[float] = field(default_factory=list)
    max_abs: float = 0.0
    abs_sum: float = 0.0
    abs_count: int = 0
    nonfinite: int = 0
    top1_hits: int = 0
    top1_total: int = 0
    ctc_exact: int = 0
    ctc_sequences: int = 0
    ctc_edits: int = 0
    ctc_reference_length: int = 0
    norm_exact: int = 0
    norm_edits: int = 0
    norm_reference_length: int = 0
    label_edits_variant: int = 0
    label_edits_reference: int = 0
    label_length: int = 0
    ious: list[float] = field(default_factory=list)
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

    def add(self, sample_id: str, reference: np.ndarray, candidate: np.ndarray, label: str | None = None) -> None:
        self.cosines.append(cosine(reference, candidate))
        self.snrs.append(snr_db(reference, candidate))
        peak, mean = abs_errors(reference, candidate)
        self.max_abs = max(self.max_abs, peak)
        self.abs_sum += mean * max(reference.size, 1)
        self.abs_count += max(reference.size, 1)
        self.nonfinite += nonfinite_count(reference, candidate)
        kind = self.spec.kind
        if kind in ("classes", "ctc") and reference.shape == candidate.shape:
            hits, total = top1_agreement(reference, candidate, self.spec.axis)
            self.top1_hits += hits
            self.top1_total += total
        if kind == "ctc":
            self._add_ctc(sample_id, reference, candidate, label)
        if kind == "prob_map":
            self.ious.append(binary_iou(reference, candidate, self.spec.threshold) if reference.shape == candidate.shape else 0.0)

    def _add_ctc(self, sample_id: str, reference: np.ndarray, candidate: np.ndarray, label: str | None) -> None:
        ref_seqs = greedy_decode(reference, self.spec.axis, self.spec.blank)
        cand_seqs = greedy_decode(candidate, self.spec.axis, self.spec.blank)
        for ref_seq, cand_seq in zip(ref_seqs, cand_seqs):
            self.ctc_sequences += 1
            self.ctc_exact += ref_seq == cand_seq
            self.ctc_edits += edit_distance(ref_seq, cand_seq)
            self.ctc_reference_length += max(len(ref_seq), 1)
            if self.normalises:
                ref_norm, cand_norm = self.normalised_text(ref_seq), self.normalised_text(cand_seq)
                self.norm_exact += ref_norm == cand_norm
                self.norm_edits += edit_distance(ref_norm, cand_norm)
                self.norm_reference_length += max(len(ref_norm), 1)
            if ref_seq != cand_seq and len(self.mismatches) < 10:
                decode = (lambda s: to_text(s, self.charset)) if self.charset else (lambda s: " ".join(map(str, s)))
                self.mismatches.append({"sample": sample_id, "fp32": decode(ref_seq), "variant": decode(cand_seq)})
            if label is not None and self.charset is not None:
                self.label_edits_reference += edit_distance(to_text(ref_seq, self.charset), label)
                self.label_edits_variant += edit_distance(to_text(cand_seq, self.charset), label)
                self.label_length += max(len(label), 1)

    def summary(self) -> dict[str, float]:
        values: dict[str, float] = {
            "cosine": float(np.mean(self.cosines)) if self.cosines else math.nan,
            "cosine_min": float(np.min(self.cosines)) if self.cosines else math.nan,
            "max_abs": self.max_abs,
            "mean_abs": self.abs_sum / self.abs_count if self.abs_count else math.nan,
            "snr_db": float(np.mean(self.snrs)) if self.snrs else math.nan,
            "snr_db_min": float(np.min(self.snrs)) if self.snrs else math.nan,
            "nonfinite": float(self.nonfinite),
        }
        if self.top1_total:
            values["top1_agreement"] = self.top1_hits / self.top1_total
        if self.ctc_sequences:
            values["ctc_exact_match"] = self.ctc_exact / self.ctc_sequences
            values["ctc_cer"] = self.ctc_edits / self.ctc_reference_length
            if self.normalises:
                values["ctc_exact_match_norm"] = self.norm_exact / self.ctc_sequences
                values["ctc_cer_norm"] = self.norm_edits / self.norm_reference_length
        if self.label_length:
            values["label_cer"] = self.label_edits_variant / self.label_length
            values["label_cer_reference"] = self.label_edits_reference / self.label_length
            values["label_cer_delta"] = (self.label_edits_variant - self.label_edits_reference) / self.label_length
        if self.ious:
            values["map_iou"] = float(np.mean(self.ious))
            values["map_iou_min"] = float(np.min(self.ious))
        return values

    def distributions(self) -> dict[str, list[float]]:
        """Per-sample values, for the report's histograms."""
        series = {"cosine": self.cosines, "snr_db": self.snrs}
        if self.ious:
            series["map_iou"] = self.ious
        return {k: [round(v, 6) for v in vals] for k, vals in series.items()}
