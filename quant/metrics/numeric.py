"""Per-sample numeric comparison of one output with FP32's."""

from __future__ import annotations

import math

import numpy as np

# SNR of identical outputs is infinite; JSON has no infinity, so it is reported capped.
SNR_CAP_DB = 200.0


def cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine similarity of the flattened tensors; 0 when the candidate is not finite or differs in shape."""
    if reference.shape != candidate.shape:
        return 0.0
    ref = reference.astype(np.float64).ravel()
    cand = candidate.astype(np.float64).ravel()
    if not np.all(np.isfinite(cand)):
        return 0.0
    # einsum, not np.dot / np.linalg.norm: those call OpenBLAS, whose threads wait for each other and fight onnxruntime's
    # for the cores (measured: 34 ms a call on a rec output in a loaded evaluation, 5 ms this way); one thread, same order
    # of additions whatever the machine's core count.
    norms = math.sqrt(float(np.einsum("i,i->", ref, ref))) * math.sqrt(float(np.einsum("i,i->", cand, cand)))
    if norms == 0.0:
        return 1.0 if np.array_equal(ref, cand) else 0.0
    return float(np.einsum("i,i->", ref, cand)) / norms


def snr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """10·log10(signal power / error power); capped, and -cap for non-finite or mis-shaped candidates."""
    if reference.shape != candidate.shape:
        return -SNR_CAP_DB
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    if not np.all(np.isfinite(cand)):
        return -SNR_CAP_DB
    noise = float(np.sum((ref - cand) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return SNR_CAP_DB
    if signal == 0.0:
        return -SNR_CAP_DB
    return float(np.clip(10.0 * math.log10(signal / noise), -SNR_CAP_DB, SNR_CAP_DB))


def abs_errors(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(max, mean) absolute difference; infinite when the candidate is not finite."""
    if reference.shape != candidate.shape:
        return math.inf, math.inf
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    if not np.all(np.isfinite(diff)):
        return math.inf, math.inf
    return float(diff.max(initial=0.0)), float(diff.mean()) if diff.size else 0.0


def nonfinite_count(reference: np.ndarray, candidate: np.ndarray) -> int:
    """NaN/Inf values the candidate produced where the reference was finite (the FP16 overflow trap)."""
    if reference.shape != candidate.shape:
        return int(candidate.size)
    return int(np.count_nonzero(~np.isfinite(candidate) & np.isfinite(reference)))


def top1_agreement(reference: np.ndarray, candidate: np.ndarray, axis: int) -> tuple[int, int]:
    """(agreeing positions, positions) of the argmax along `axis`."""
    ref_top = np.argmax(reference, axis=axis)
    cand_top = np.argmax(np.nan_to_num(candidate, nan=-np.inf), axis=axis)
    return int(np.count_nonzero(ref_top == cand_top)), int(ref_top.size)
