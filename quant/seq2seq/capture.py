"""Calibration feeds for a decoder part, captured from real FP32 generation (never zeros).

Static quantization of a decoder needs its real inputs: the encoder states and the past keys/values
of each step. They exist only while the FP32 family generates, so this reader runs greedy generation
on each calibration input and hands onnxruntime's calibrator the feeds the chosen part received,
step by step. Streamed: at most one input's steps are held at a time (bounded by max_new_tokens).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from quant.seq2seq.generate import ENCODER_STATES, PAST_PREFIX, Family, Feeds, GenerationConfig, generate

DECODER_PARTS = ("decoder", "decoder_with_past")


class ZeroStateError(ValueError):
    """A decoder step was about to be calibrated on all-zero keys/values or encoder states."""


def check_real_state(part: str, feeds: Feeds) -> Feeds:
    """Refuse an all-zero past key/value or encoder state: calibrating on those gives ranges of nothing
    (the garbage static decoders of the field). Real generation never produces an exactly zero tensor."""
    for name, value in feeds.items():
        if (name.startswith(PAST_PREFIX) or name == ENCODER_STATES) and value.size and not np.any(value):
            raise ZeroStateError(
                f"{part} calibration feed '{name}' {list(value.shape)} is all zeros: calibrate on states captured from FP32 generation"
            )
    return feeds


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
                steps.append(check_real_state(part, fed))

        generate(self.family, encoder_feeds, self.config, observe=keep)
        return steps

    def _captured(self) -> Iterator[Feeds]:
        for feeds in self.encoder_feeds:
            steps = self._steps(feeds)
            self.samples += 1
            yield from steps

    def get_next(self) -> Feeds | None:
        return next(self._feeds, None)


class CapturedFeeds:
    """Re-iterable feeds of a decoder part from FP32 generation: each pass generates again (histogram
    calibration reads the data several times), holding one input's steps at a time. `encoder_feeds`
    must be re-iterable too (a list, or an object whose __iter__ starts over)."""

    def __init__(self, family: Family, encoder_feeds: Iterable[Feeds], config: GenerationConfig, part: str) -> None:
        if iter(encoder_feeds) is encoder_feeds:
            raise TypeError("encoder_feeds is read once per pass: give a list or another re-iterable, not an iterator")
        CapturedDecoderReader(family, [], config, part)  # checks the part name before any generation
        self.family, self.encoder_feeds, self.config, self.part = family, encoder_feeds, config, part

    def __iter__(self) -> Iterator[Feeds]:
        reader = CapturedDecoderReader(self.family, self.encoder_feeds, self.config, self.part)
        while (feeds := reader.get_next()) is not None:
            yield feeds
