"""CTC recognisers: greedy decoding, edit distance, text from a character list."""

from __future__ import annotations

import numpy as np


def greedy_decode(probabilities: np.ndarray, axis: int = -1, blank: int = 0) -> list[tuple[int, ...]]:
    """Best path per batch element: argmax per frame, collapse repeats, drop blanks."""
    best = np.argmax(np.nan_to_num(probabilities, nan=-np.inf), axis=axis)
    if best.ndim == 1:
        best = best[np.newaxis]
    sequences = []
    for row in best.reshape(best.shape[0], -1):
        keep = np.ones(row.shape, dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        sequences.append(tuple(int(t) for t in row[keep] if t != blank))
    return sequences


def edit_distance(first: tuple[int, ...] | str, second: tuple[int, ...] | str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    previous = list(range(len(second) + 1))
    for i, a in enumerate(first, start=1):
        current = [i]
        for j, b in enumerate(second, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1]


def to_text(sequence: tuple[int, ...], charset: list[str]) -> str:
    return "".join(charset[i] if 0 <= i < len(charset) else "\ufffd" for i in sequence)


def confidence_margins(probabilities: np.ndarray, axis: int = -1) -> list[float]:
    """Per batch element: the smallest gap between the best and second-best class over its frames.

    A line FP32 reads with a small margin somewhere is a line where FP32 itself nearly read
    something else; a quantized model disagreeing there says less than disagreeing on a sure line."""
    values = np.moveaxis(np.nan_to_num(probabilities, nan=-np.inf), axis, -1)
    if values.ndim == 2:
        values = values[np.newaxis]
    values = values.reshape(values.shape[0], -1, values.shape[-1])
    if values.shape[-1] < 2 or values.shape[1] == 0:
        return [1.0] * values.shape[0]
    top_two = np.sort(values, axis=-1)[..., -2:]
    return [float(m) for m in (top_two[..., 1] - top_two[..., 0]).min(axis=1)]
