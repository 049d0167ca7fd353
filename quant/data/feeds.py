"""Feeding samples to a model: every sample's tensors checked against the model's declared inputs."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from quant.data.sources import Feeds, Sample, SampleSource
from quant.errors import DataError
from quant.model import Dims


def _fits(shape: tuple[int, ...], dims: Dims) -> bool:
    return len(shape) == len(dims) and all(not (isinstance(d, int) and d > 0) or d == s for d, s in zip(dims, shape))


def shape_hint(shape: tuple[int, ...], dims: Dims) -> str:
    """When a tensor would fit without its batch axis, or with its channels moved or counted differently, say which setting does it."""
    if shape[:1] == (1,) and _fits(shape[1:], dims):
        return " (an .npz row gets a batch axis of one in front: list this input under the source's `unbatched` to feed rows as stored)"
    if len(shape) != 4 or len(dims) != 4:
        return ""
    n, a, b, c = shape
    if _fits((n, c, a, b), dims):
        return " (the model is channels-first: set layout: NCHW)"
    if _fits((n, b, c, a), dims):
        return " (the model is channels-last: set layout: NHWC)"
    for channels_at in (1, 3):
        wanted = dims[channels_at]
        if isinstance(wanted, int) and shape[channels_at] in (1, 3) and wanted in (1, 3) and wanted != shape[channels_at]:
            swapped = list(shape)
            swapped[channels_at] = wanted
            if _fits(tuple(swapped), dims):
                return f" (the model takes {wanted} channel(s): set color: {'GRAY' if wanted == 1 else 'RGB or BGR'})"
    return ""


def check_feeds(sample: Sample, feeds: Feeds, model_inputs: dict[str, Dims], where: str) -> None:
    """A tensor must match the model's declared rank and every fixed dimension."""
    for name, dims in model_inputs.items():
        if name not in feeds:
            raise DataError(f"sample '{sample.id}' gives no tensor for model input '{name}'", file=where, field="inputs")
        shape = feeds[name].shape
        fixed_mismatch = any(isinstance(d, int) and d > 0 and d != s for d, s in zip(dims, shape))
        if len(shape) != len(dims) or fixed_mismatch:
            raise DataError(
                f"sample '{sample.id}' becomes a tensor of shape {list(shape)} for input '{name}', "
                f"but the model expects {dims}{shape_hint(shape, dims)}",
                file=where,
                field=f"inputs.{name}",
            )
        if feeds[name].dtype != np.float32 and np.issubdtype(feeds[name].dtype, np.floating):
            feeds[name] = feeds[name].astype(np.float32)


def checked_feeds(source: SampleSource, model_inputs: dict[str, Dims]) -> Iterator[tuple[Sample, Feeds]]:
    """Every sample's feeds, one at a time, each checked against the model's inputs."""
    for sample, feeds in source:
        check_feeds(sample, feeds, model_inputs, source.where)
        yield sample, feeds
