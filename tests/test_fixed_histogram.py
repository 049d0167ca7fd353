"""FixedRangeHistogram gives np.histogram's counts and edges exactly (the histograms ORT's calibrators compute)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant.calibration.fixed_histogram import FixedRangeHistogram


def _edge_hugging(edges: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Values on the edges and one or two float32 steps either side: where a bin estimate goes wrong."""
    picked = edges[rng.integers(0, len(edges), size)]
    steps = rng.integers(-2, 3, size)
    out = picked.copy()
    for _ in range(2):
        out = np.where(steps > 0, np.nextafter(out, np.float32(np.inf)), np.where(steps < 0, np.nextafter(out, np.float32(-np.inf)), out))
        steps = steps - np.sign(steps)
    return np.clip(out, edges[0], edges[-1]).astype(np.float32)


@settings(max_examples=120, deadline=None)
@given(
    magnitude=st.floats(-30, 30),
    low_fraction=st.one_of(st.just(-1.0), st.floats(0, 0.99)),
    bins=st.sampled_from([128, 2048, 7]),
    size=st.integers(1, 150_000),
    seed=st.integers(0, 2**32 - 1),
)
def test_counts_and_edges_equal_numpy(magnitude: float, low_fraction: float, bins: int, size: int, seed: int) -> None:
    # The ranges calibration uses: (-t, t) for signed histograms, (min|x|, max|x|) for |x| ones.
    rng = np.random.default_rng(seed)
    high = np.float32(2.0**magnitude)
    value_range = (np.float32(-high), high) if low_fraction < 0 else (np.float32(high * low_fraction), high)
    histogram = FixedRangeHistogram(bins, value_range)
    edges = histogram.edges(np.dtype(np.float32))
    spread = rng.uniform(value_range[0], value_range[1], size).astype(np.float32)
    values = np.concatenate([spread, _edge_hugging(edges, rng, size), np.array(value_range, np.float32)])
    expected_counts, expected_edges = np.histogram(values, bins, range=value_range)
    counts = histogram.counts(values)
    assert counts.dtype == expected_counts.dtype
    np.testing.assert_array_equal(counts, expected_counts)
    np.testing.assert_array_equal(edges, expected_edges)
    assert histogram._plan(values.dtype) is not None  # these ranges take the fast path: it is what was compared


def test_values_numpy_leaves_out_and_other_dtypes_give_numpys_counts() -> None:
    value_range = (np.float32(-1), np.float32(1))
    histogram = FixedRangeHistogram(128, value_range)
    cases = [
        np.array([0.5, np.nan, -0.25, 1.0], np.float32),  # NaN: left out
        np.array([0.5, 3.0, -7.0, 1.0, -1.0], np.float32),  # outside the range: left out
        np.linspace(-1, 1, 1001, dtype=np.float16),
        np.linspace(-1, 1, 1001, dtype=np.float64),
        np.empty(0, np.float32),
    ]
    for values in cases:
        np.testing.assert_array_equal(histogram.counts(values), np.histogram(values, 128, range=value_range)[0])
        np.testing.assert_array_equal(histogram.edges(values.dtype), np.histogram(values, 128, range=value_range)[1])


@pytest.mark.parametrize("value_range", [(np.float32(1.0), np.float32(1.0 + 2**-14)), (np.float32(0), np.float32(0))])
def test_bins_a_few_float_steps_wide_go_to_numpy(value_range: tuple[np.float32, np.float32]) -> None:
    # 128 bins over 2**-14 at 1.0 are a float32 step or so each: the estimate's bound does not hold, numpy bins.
    histogram = FixedRangeHistogram(128, value_range)
    assert histogram._plan(np.dtype(np.float32)) is None
    values = (value_range[0] + np.arange(200, dtype=np.float32) * np.float32(2**-22)).astype(np.float32)
    np.testing.assert_array_equal(histogram.counts(values), np.histogram(values, 128, range=value_range)[0])
