"""Calibration feeds for a decoder part, captured from real FP32 generation (never zeros).

Static quantization of a decoder needs its real inputs: the encoder states and the past keys/values
of each step. They exist only while the FP32 family generates, so this reader runs greedy generation
on each calibration input and hands onnxruntime's calibrator the feeds the chosen part received,
step by step. Streamed: at most one input's steps are held at a time (bounded by max_new_tokens).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from onnxruntime.quantization import CalibrationDataReader

from quant.seq2seq.generate import Family, Feeds, GenerationConfig, generate

DECODER_PARTS = ("decoder", "decoder_with_past")


class CapturedDecoderReader(CalibrationDataReader):
    """onnxruntime's CalibrationDataReader over the feeds `part` got while the FP32 family generated."""

    def __init__(self, family: Family, encoder_feeds: Iterable[Feeds], config: GenerationConfig, part: str) -> None:
        if part not in DECODER_PARTS:
            raise ValueError(f"part must be one of {DECODER_PARTS}, not {part!r}")
        self.family, self.encoder_feeds, self.config, self.part = family, encoder_feeds, config, part
        self.samples = 0  # encoder inputs generated so far
        self._feeds = self._captured()

    def _steps(self, encoder_feeds: Feeds) -> list[Feeds]:
        """What `part` was fed at each step while the family generated for one input."""
        steps: list[Feeds] = []

        def keep(part: str, fed: Feeds) -> None:
            if part == self.part:
                steps.append(fed)

        generate(self.family, encoder_feeds, self.config, observe=keep)
        return steps

    def _captured(self) -> Iterator[Feeds]:
        for feeds in self.encoder_feeds:
            steps = self._steps(feeds)
            self.samples += 1
            yield from steps

    def get_next(self) -> Feeds | None:
        return next(self._feeds, None)
