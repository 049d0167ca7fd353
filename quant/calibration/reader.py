"""onnxruntime's CalibrationDataReader protocol over a sample source."""

from __future__ import annotations

from collections.abc import Iterator

from onnxruntime.quantization import CalibrationDataReader

from quant.data.feeds import checked_feeds
from quant.data.sources import Feeds, Sample, SampleSource
from quant.model import Dims


class CalibrationReader(CalibrationDataReader):
    """onnxruntime's reader protocol over a sample source; loads one sample per call, never all at once."""

    def __init__(self, source: SampleSource, model_inputs: dict[str, Dims]) -> None:
        self.source = source
        self.model_inputs = model_inputs
        self._iterator: Iterator[tuple[Sample, Feeds]] | None = None
        self.count = 0

    def get_next(self) -> Feeds | None:
        if self._iterator is None:
            self._iterator = checked_feeds(self.source, self.model_inputs)
        item = next(self._iterator, None)
        if item is None:
            return None
        self.count += 1
        return item[1]

    def rewind(self) -> None:
        self._iterator = None
        self.count = 0

    def __len__(self) -> int:
        return len(self.source)
