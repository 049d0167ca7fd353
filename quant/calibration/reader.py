"""Feeding samples to onnxruntime: shape checks, and the CalibrationDataReader protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from quant.calibration.sources import Feeds, Sample, SampleSource
from quant.errors import DataError

Dims = list[int | str | None]


def check_feeds(sample: Sample, feeds: Feeds, model_inputs: dict[str, Dims], where: str) -> None:
    """A tensor must match the model's declared rank and every fixed dimension."""
    for name, dims in model_inputs.items():
        if name not in feeds:
            raise DataError(f"sample '{sample.id}' gives no tensor for model input '{name}'", file=where, field="inputs")
        shape = feeds[name].shape
        fixed_mismatch = any(isinstance(d, int) and d > 0 and d != s for d, s in zip(dims, shape))
        if len(shape) != len(dims) or fixed_mismatch:
            raise DataError(
                f"sample '{sample.id}' becomes a tensor of shape {list(shape)} for input '{name}', but the model expects {dims}",
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


class CalibrationReader(CalibrationDataReader):
    """onnxruntime's reader protocol over a sample source; loads one sample per call, never all at once."""

    def __init__(self, source: SampleSource, model_inputs: dict[str, Dims], progress: Callable[[int], None] | None = None) -> None:
        self.source = source
        self.model_inputs = model_inputs
        self.progress = progress
        self._iterator: Iterator[tuple[Sample, Feeds]] | None = None
        self.count = 0

    def get_next(self) -> Feeds | None:
        if self._iterator is None:
            self._iterator = checked_feeds(self.source, self.model_inputs)
        item = next(self._iterator, None)
        if item is None:
            return None
        self.count += 1
        if self.progress:
            self.progress(self.count)
        return item[1]

    def rewind(self) -> None:
        self._iterator = None
        self.count = 0

    def __len__(self) -> int:
        return len(self.source)
