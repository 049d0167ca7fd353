"""The latency ratio of a variant to FP32 from paired rounds, and its 95 % interval.

Each round times FP32 and the variant back to back (ABBA order), so whatever load the machine has then
slows both alike: the round's own ratio variant_i / reference_i cancels it, and the rounds' ratios are the
units to reason about. (A ratio of the two medians throws that pairing away: each median carries the
load's whole spread, and the interval gets several times wider than the real uncertainty.)

Working on log ratios: with the order alternating, a burst of load is as likely to hit the variant's half
of a round as FP32's, so each round's log ratio is spread symmetrically about the true one, though not
alike from round to round (noisier when the machine is busier). That is exactly what the Wilcoxon
signed-rank test needs, and its estimator is the Hodges-Lehmann one: the median of the Walsh averages
(x_i + x_j) / 2, i <= j, of the log ratios, with a distribution-free 95 % interval between two of
their order statistics. It is nearly as tight as a t interval on normal data and, unlike the geometric
mean, one round hit by a burst cannot move it far. Fewer than MIN_ROUNDS rounds cannot give a 95 %
interval this way (nor any other way that does not assume a distribution).

Looking again after more rounds is looking several times: each look's 95 % interval misses the true
ratio 5 % of the time, and "stop as soon as it clears the threshold" would pick those misses (measured on
a true ratio exactly at the threshold: 9.8 % of runs decided within three looks). `level_per_look` splits
the 5 % over the looks the budget allows (Bonferroni), so the interval the verdict rests on is a 95 % one
over the whole measurement.

numpy only; the tests check the critical depths against the enumerated null distribution (all 2^n signs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from quant.intervals import LEVEL, Interval

MIN_ROUNDS = 6  # the fewest rounds whose signed-rank (or sign-test) interval can reach 95 % coverage


def level_per_look(looks: int, level: float = LEVEL) -> float:
    """Coverage each of `looks` intervals needs so that all of them hold together with `level` (Bonferroni)."""
    return 1 - (1 - level) / max(looks, 1)


def min_rounds(level: float = LEVEL) -> int:
    """The fewest rounds whose signed-rank interval can reach `level`: 2^-n <= (1 - level) / 2."""
    return max(MIN_ROUNDS, math.ceil(math.log2(2 / (1 - level)) - 1e-9))


def log_ratios(reference: Sequence[float], variant: Sequence[float]) -> np.ndarray:
    """log(variant_i / reference_i) for each paired round."""
    ref = np.asarray(reference, dtype=np.float64)
    var = np.asarray(variant, dtype=np.float64)
    if ref.shape != var.shape or ref.ndim != 1:
        raise ValueError(f"reference {ref.shape} and variant {var.shape} times must be 1-D and of one length")
    return np.log(var) - np.log(ref)


def signed_rank_depth(n: int, level: float = LEVEL) -> int:
    """The 1-based depth c of the interval [W_(c), W_(M+1-c)] over the M = n(n+1)/2 sorted Walsh averages
    that covers with at least `level`: the largest c with P(T <= c - 1) <= (1 - level) / 2 for the
    signed-rank statistic T under symmetry. 0 when n is too small for any such interval."""
    # Exact null distribution of T: each rank 1..n is in the positive set with probability 1/2.
    probabilities = np.zeros(n * (n + 1) // 2 + 1)
    probabilities[0] = 1.0
    for rank in range(1, n + 1):
        shifted = np.zeros_like(probabilities)
        shifted[rank:] = probabilities[:-rank]
        probabilities = (probabilities + shifted) / 2
    cumulative = np.cumsum(probabilities)
    tail = (1 - level) / 2
    return int(np.searchsorted(cumulative, tail * (1 + 1e-12), side="right"))  # count of t with P(T <= t) <= tail


def hodges_lehmann_ratio(reference: Sequence[float], variant: Sequence[float], level: float = LEVEL) -> tuple[float, Interval]:
    """The paired latency ratio: exp of the Hodges-Lehmann estimate of the per-round log ratios, and its
    signed-rank interval. Below MIN_ROUNDS rounds the interval is [nan, nan]: undecided against any bound."""
    logs = log_ratios(reference, variant)
    n = int(logs.size)
    if n == 0:
        return math.nan, Interval(math.nan, math.nan, 0, "signed_rank")
    upper = np.triu_indices(n)
    walsh = np.sort((logs[upper[0]] + logs[upper[1]]) / 2)
    point = math.exp(float(np.median(walsh)))
    depth = signed_rank_depth(n, level)
    if depth == 0:
        return point, Interval(math.nan, math.nan, n, "signed_rank")
    return point, Interval(math.exp(float(walsh[depth - 1])), math.exp(float(walsh[walsh.size - depth])), n, "signed_rank")


def sign_test_depth(n: int, level: float = LEVEL) -> int:
    """The 1-based depth c of the order-statistic interval [x_(c), x_(n+1-c)] for a median covering with at
    least `level` (binomial(n, 1/2) tails); 0 when n is too small."""
    cumulative = np.cumsum([math.comb(n, k) for k in range(n + 1)]) / 2.0**n
    return int(np.searchsorted(cumulative, (1 - level) / 2 * (1 + 1e-12), side="right"))


def median_ratio(reference: Sequence[float], variant: Sequence[float], level: float = LEVEL) -> tuple[float, Interval]:
    """Median of the per-round ratios and its distribution-free (sign-test) interval: assumes only that
    the rounds are independent, not that they are symmetric; wider than the signed-rank one."""
    ratios = np.sort(np.exp(log_ratios(reference, variant)))
    n = int(ratios.size)
    if n == 0:
        return math.nan, Interval(math.nan, math.nan, 0, "sign_test")
    depth = sign_test_depth(n, level)
    point = float(np.median(ratios))
    if depth == 0:
        return point, Interval(math.nan, math.nan, n, "sign_test")
    return point, Interval(float(ratios[depth - 1]), float(ratios[n - depth]), n, "sign_test")
