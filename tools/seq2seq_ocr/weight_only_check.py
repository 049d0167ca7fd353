#!/usr/bin/env python3
"""A first look at weight-only quantization of the seq2seq OCR decoders (until quant's generation gates exist).

Builds weight_only variants of decoder_model.onnx and decoder_with_past_model.onnx with quant's own
method (the encoder stays FP32), decodes the split greedily with each family and prints, per
variant: decoder file sizes, CER vs labels, CER vs FP32's text, exact agreement with FP32's text.

Usage: PYTHONPATH=. python tools/seq2seq_ocr/weight_only_check.py --model models/seq2seq-ocr --split calibration_data/seq2seq_lines/tune
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from quant.methods.base import BuildContext, builder_for
from quant.model import file_sha256
from quant.recipe.schema import WeightOnlyOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lines
from eval_onnx import read_texts

DECODERS = ("decoder_model.onnx", "decoder_with_past_model.onnx")
LM_HEAD = "/decoder/lm_head/MatMul"
VARIANTS = {
    "int8": {"bits": 8, "block_size": 32},
    "int4": {"bits": 4, "block_size": 32},
    "int4-lm_head-int8": {"bits": 4, "block_size": 32, "overrides": {LM_HEAD: {"bits": 8}}},
    "int4-acc4": {"bits": 4, "block_size": 32, "accuracy_level": 4},
    "int4-block128-sym": {"bits": 4, "block_size": 128, "symmetric": True},
}


def build_family(source: Path, target: Path, options: dict, scratch: Path) -> None:
    target.mkdir(parents=True)
    for name in ("encoder_model.onnx", "generation_config.json", "vocab.json"):
        shutil.copy(source / name, target / name)
    variant = WeightOnlyOptions.model_validate({"method": "weight_only", **options})
    for name in DECODERS:
        context = BuildContext(model_path=source / name, model_sha256=file_sha256(source / name), model_inputs={},
                               work_dir=scratch, cache_dir=scratch, log=lambda _: None)
        builder_for(variant)(variant, context, target / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/seq2seq-ocr"))
    ap.add_argument("--split", type=Path, default=Path("calibration_data/seq2seq_lines/tune"))
    args = ap.parse_args()
    fp32_texts, labels = read_texts(args.model, args.split)[:2]
    size = sum((args.model / n).stat().st_size for n in DECODERS)
    print(f"fp32: decoders {size / 2**20:.2f} MiB, CER vs labels {lines.cer(fp32_texts, labels):.4f}, {len(labels)} lines")
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in VARIANTS.items():
            folder = Path(tmp) / name
            build_family(args.model, folder, options, Path(tmp) / "scratch")
            texts, _ = read_texts(folder, args.split)[:2]
            size = sum((folder / n).stat().st_size for n in DECODERS)
            same = sum(a == b for a, b in zip(texts, fp32_texts, strict=True)) / len(texts)
            print(f"{name}: decoders {size / 2**20:.2f} MiB, CER vs labels {lines.cer(texts, labels):.4f}, "
                  f"CER vs FP32 text {lines.cer(texts, fp32_texts):.4f}, same text as FP32 {same:.3f}")


if __name__ == "__main__":
    main()
