"""Per-token latency of weight-only decoders vs FP32 on the seq2seq OCR model, interleaved.

    PYTHONPATH=. python benchmarks/seq2seq_decoder_latency.py --rounds 7 --lines 16

Builds int8 and int4 (block 32, accuracy_level 0 and 4 each) variants of both decoder files with quant's
weight_only method (encoder FP32), then in each round greedy-decodes the same held-out lines with
FP32 and every variant, in a rotating order, one onnxruntime thread. Per family it prints the median
over rounds of decoder seconds per generated token (the encoder is timed apart and left out) and the
median of the per-round ratios to FP32. The machine is shared: read the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from quant.data.transforms import image_to_tensor
from quant.seq2seq.generate import Family, GenerationConfig, generate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "seq2seq_ocr"))
import lines
from eval_onnx import INPUT, load_family
from weight_only_check import build_family

VARIANTS = {
    "int8": {"bits": 8, "block_size": 32},
    "int8-acc4": {"bits": 8, "block_size": 32, "accuracy_level": 4},
    "int4": {"bits": 4, "block_size": 32},
    "int4-acc4": {"bits": 4, "block_size": 32, "accuracy_level": 4},
}


class TimedSession:
    """An onnxruntime session that adds the time of every run() to `seconds`."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session, self.seconds = session, 0.0
        self.get_inputs, self.get_outputs = session.get_inputs, session.get_outputs

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        start = time.perf_counter()
        try:
            return self.session.run(output_names, feeds)
        finally:
            self.seconds += time.perf_counter() - start


def decoder_seconds_per_token(family: Family, images: list, config: GenerationConfig) -> float:
    """Decoder time (both decoder files, not the encoder) per generated token over the images."""
    first, with_past = TimedSession(family.decoder), TimedSession(family.decoder_with_past)
    timed = Family(family.encoder, first, with_past)  # type: ignore[arg-type]
    tokens = sum(len(generate(timed, {"pixel_values": pixels}, config).step_logits) for pixels in images)
    return (first.seconds + with_past.seconds) / tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/seq2seq-ocr"))
    ap.add_argument("--split", type=Path, default=Path("calibration_data/seq2seq_lines/tune"))
    ap.add_argument("--lines", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    images = [image_to_tensor(Image.open(args.split / name), INPUT) for name, _ in lines.read_split(args.split)[: args.lines]]
    config = GenerationConfig(lines.BOS_ID, lines.EOS_ID, 49)
    with tempfile.TemporaryDirectory() as tmp:
        families = {"fp32": load_family(args.model)}
        for name, options in VARIANTS.items():
            build_family(args.model, Path(tmp) / name, options, Path(tmp) / "scratch")
            families[name] = load_family(Path(tmp) / name)
        names = list(families)
        for family in families.values():  # warm-up
            decoder_seconds_per_token(family, images[:2], config)
        timings: dict[str, list[float]] = {name: [] for name in names}
        for round_index in range(args.rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in order:
                timings[name].append(decoder_seconds_per_token(families[name], images, config))
    for name in names:
        ratios = [v / f for v, f in zip(timings[name], timings["fp32"], strict=True)]
        print(f"{name}: decoder {statistics.median(timings[name]) * 1e3:.3f} ms/token, "
              f"ratio to FP32 {statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
