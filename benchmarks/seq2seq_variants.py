"""Variants of the seq2seq OCR family vs FP32: size, generated-text agreement, CER vs labels, latency per token.

    PYTHONPATH=. python benchmarks/seq2seq_variants.py --eval-lines 200 --bench-lines 16 --rounds 9
    PYTHONPATH=. python benchmarks/seq2seq_variants.py --only "zero K/V"    # what quant refuses to build, measured

Each variant applies one method per part with quant.seq2seq.parts.build_part (static INT8 calibrated on the
`calib` split: images for the encoder, steps captured from FP32 generation for a decoder), then
quant.seq2seq.compare.compare_generation judges it against FP32 on the held-out `eval` split (95 %
intervals, sample counts) and quant.seq2seq.latency.family_latency times it interleaved with FP32 on
the first `--bench-lines` eval lines, one onnxruntime thread. The machine is shared: read the ratios and
their intervals, not the absolute times. Nothing here is a pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from quant.data.transforms import image_to_tensor
from quant.recipe.schema import DynamicInt8Options, Fp16Options, StaticInt8Options, WeightOnlyOptions
from quant.seq2seq.compare import compare_generation, reference_generations
from quant.seq2seq.generate import PAST_PREFIX, Feeds, GenerationConfig
from quant.seq2seq.latency import family_latency
from quant.seq2seq.parts import PART_FILES, PartOptions, _build_static, _context, build_part, open_family, part_feeds
from quant.seq2seq.vocabulary import Vocabulary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "seq2seq_ocr"))
import lines
from eval_onnx import INPUT

LM_HEAD = "/decoder/lm_head/MatMul"
ZERO_KV = "static int8 decoder_with_past calibrated on zero K/V (refused by quant; built here unchecked)"
DECODERS = ("decoder", "decoder_with_past")


def _both_decoders(options: PartOptions) -> dict[str, PartOptions]:
    return dict.fromkeys(DECODERS, options)


def _weight_only(bits: int, **extra: object) -> WeightOnlyOptions:
    return WeightOnlyOptions.model_validate({"method": "weight_only", "bits": bits, "block_size": 32, "accuracy_level": 4, **extra})


STATIC = StaticInt8Options(method="static_int8", calibrate="minmax", per_channel=True, reduce_range=False)
VARIANTS: dict[str, dict[str, PartOptions]] = {
    "fp16 (all parts)": dict.fromkeys(PART_FILES, Fp16Options(method="fp16")),
    "dynamic int8 decoders": _both_decoders(DynamicInt8Options(method="dynamic_int8", per_channel=True)),
    "weight-only int8 decoders (acc 4)": _both_decoders(_weight_only(8)),
    "weight-only int4 decoders, LM head int8 (acc 4)": _both_decoders(_weight_only(4, overrides={LM_HEAD: {"bits": 8}})),
    "weight-only int4 decoders incl. LM head (acc 4)": _both_decoders(_weight_only(4)),
    "static int8 encoder": {"encoder": STATIC},
    "static int8 encoder + weight-only int4 decoders, LM head int8": {
        "encoder": STATIC,
        **_both_decoders(_weight_only(4, overrides={LM_HEAD: {"bits": 8}})),
    },
    "static int8 decoders (captured K/V, MatMul only)": _both_decoders(STATIC.model_copy(update={"op_types": ["MatMul"]})),
    "static int8 decoders (captured K/V, every op type)": _both_decoders(STATIC),
    "weight-only int4 block 128 symmetric decoders incl. LM head (acc 4)": _both_decoders(_weight_only(4, block_size=128, symmetric=True)),
    # The field's mistake, which build_part refuses: decoder_with_past calibrated on all-zero past K/V.
    ZERO_KV: {"decoder_with_past": STATIC.model_copy(update={"op_types": ["MatMul"]})},
}


class ZeroedPast:
    """The captured steps with every past key/value replaced by zeros of the same shape (never do this)."""

    def __init__(self, feeds: Iterable[Feeds]) -> None:
        self.feeds = feeds

    def __iter__(self) -> Iterator[Feeds]:
        for fed in self.feeds:
            yield {name: np.zeros_like(value) if name.startswith(PAST_PREFIX) else value for name, value in fed.items()}


def _images(split: Path, limit: int | None) -> tuple[list[dict], list[str]]:
    rows = lines.read_split(split)[:limit]
    return [{"pixel_values": image_to_tensor(Image.open(split / name), INPUT)} for name, _ in rows], [text for _, text in rows]


def _family_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and (f.suffix == ".onnx" or f.name.endswith(".onnx.data")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/seq2seq-ocr"))
    ap.add_argument("--data", type=Path, default=Path("calibration_data/seq2seq_lines"))
    ap.add_argument("--eval-lines", type=int, default=200)
    ap.add_argument("--calib-lines", type=int, default=32)
    ap.add_argument("--bench-lines", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", action="append", help="run only variants whose name contains this (repeatable)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args()
    generation = json.loads((args.model / "generation_config.json").read_text())
    config = GenerationConfig(generation["decoder_start_token_id"], generation["eos_token_id"], generation["max_length"] - 1)
    vocabulary = Vocabulary.from_file(args.model / "vocab.json")
    fp32 = open_family(args.model)
    evaluation, labels = _images(args.data / "eval", args.eval_lines)
    calibration, _ = _images(args.data / "calib", args.calib_lines)
    started = time.perf_counter()
    fp32_generations = reference_generations(fp32, evaluation, config)
    fp32_size = _family_size(args.model)
    print(f"FP32: {fp32_size / 2**20:.2f} MiB, {len(evaluation)} eval lines generated in {time.perf_counter() - started:.1f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    records = []
    with tempfile.TemporaryDirectory(prefix="seq2seq-variants-") as scratch:
        for name, per_part in VARIANTS.items():
            if args.only and not any(word in name for word in args.only):
                continue
            folder = Path(scratch) / f"v{len(records)}"
            folder.mkdir()
            built = time.perf_counter()
            for part, file in PART_FILES.items():
                if part not in per_part:
                    shutil.copy(args.model / file, folder / file)
                    continue
                options = per_part[part]
                feeds = part_feeds(fp32, part, calibration, config) if isinstance(options, StaticInt8Options) else None
                work, cache = Path(scratch) / "work", Path(scratch) / "cache"
                if name == ZERO_KV:  # past build_part's zero-state check, on purpose: the library has no switch for this
                    _build_static(options, _context(args.model / file, work, cache, print), folder / file, ZeroedPast(feeds))
                    continue
                build_part(options, part, args.model / file, folder / file, work_dir=work, cache_dir=cache, feeds=feeds)
            build_seconds = time.perf_counter() - built
            variant = open_family(folder)
            result = compare_generation(fp32_generations, variant, evaluation, config, vocabulary, labels)
            estimates = result.estimates()
            latency = family_latency(fp32, variant, evaluation[: args.bench_lines], config, rounds=args.rounds, warmup=1)
            record = {
                "variant": name,
                "size_mib": _family_size(folder) / 2**20,
                "size_ratio": _family_size(folder) / fp32_size,
                "build_seconds": build_seconds,
                "metrics": {m: e.to_dict() for m, e in estimates.items()},
                "first_divergence": result.divergence_summary(),
                "latency": latency.to_dict(),
                "examples": [line.to_dict() for line in result.mismatches(3)],
            }
            records.append(record)
            agree, cer, label = estimates["seq_exact_match"], estimates["seq_cer_vs_fp32"], estimates["seq_label_cer"]
            print(
                f"{name}: {record['size_mib']:.2f} MiB (x{record['size_ratio']:.2f}); same text {agree.value:.1%} "
                f"[{agree.interval.low:.1%}, {agree.interval.high:.1%}]; CER vs FP32 {cer.value:.2%} [{cer.interval.high:.2%} high]; "
                f"CER vs labels {label.value:.2%} (FP32 {estimates['seq_label_cer_reference'].value:.2%}, "
                f"delta {estimates['seq_label_cer_delta'].value:+.2%} [{estimates['seq_label_cer_delta'].interval.low:+.2%}, "
                f"{estimates['seq_label_cer_delta'].interval.high:+.2%}]); teacher-forced top-1 {estimates['teacher_forced_top1'].value:.2%}, "
                f"KL {estimates['teacher_forced_kl'].value:.4f}; first divergence median {result.first_divergence_median():g}; "
                f"unfinished {estimates['seq_unfinished'].value:.1%}; latency/token x{latency.token_ratio:.2f} "
                f"[{latency.token_interval.low:.2f}, {latency.token_interval.high:.2f}], /image x{latency.image_ratio:.2f} "
                f"({latency.rounds} rounds, load {latency.load.load_before:.1f}->{latency.load.load_after:.1f})",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(records, indent=1, default=str))


if __name__ == "__main__":
    main()
