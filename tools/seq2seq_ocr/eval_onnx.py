#!/usr/bin/env python3
"""Greedy CER of the exported seq2seq OCR family with onnxruntime (runs in quant's venv, no torch).

Images become pixel_values through quant's own recipe transform (the input spec below), so the
figure is what a quant recipe with that spec will see.

Usage: PYTHONPATH=. python tools/seq2seq_ocr/eval_onnx.py --model models/seq2seq-ocr --split calibration_data/seq2seq_lines/eval
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onnxruntime as ort
from PIL import Image

from quant.data.transforms import image_to_tensor
from quant.recipe.schema import ImageInput
from quant.seq2seq.generate import Family, GenerationConfig, generate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lines

INPUT = ImageInput.model_validate(
    {"resize": {"mode": "height", "height": 32, "multiple_of": 8, "max_width": 384},
     "scale": "1/255", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "color": "RGB", "layout": "NCHW"}
)


def load_family(folder: Path) -> Family:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1

    def session(name: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])

    return Family(session("encoder_model.onnx"), session("decoder_model.onnx"), session("decoder_with_past_model.onnx"))


def read_texts(model: Path, split: Path) -> tuple[list[str], list[str], int]:
    """Greedy text of every line of the split, its labels, and how many lines hit max_length unfinished."""
    family = load_family(model)
    generation = json.loads((model / "generation_config.json").read_text())
    vocab = json.loads((model / "vocab.json").read_text())
    tokens = {i: t for t, i in vocab.items()}
    config = GenerationConfig(generation["decoder_start_token_id"], generation["eos_token_id"], generation["max_length"] - 1)
    predictions, labels, unfinished = [], [], 0
    for name, text in lines.read_split(split):
        pixels = image_to_tensor(Image.open(split / name), INPUT)
        result = generate(family, {"pixel_values": pixels}, config)
        unfinished += not result.finished
        predictions.append("".join(tokens[t] for t in result.tokens if t > lines.EOS_ID))
        labels.append(text)
    return predictions, labels, unfinished


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/seq2seq-ocr"))
    ap.add_argument("--split", type=Path, default=Path("calibration_data/seq2seq_lines/eval"))
    ap.add_argument("--show", type=int, default=5, help="print this many wrong lines")
    args = ap.parse_args()
    start = time.time()
    predictions, labels, unfinished = read_texts(args.model, args.split)
    took = time.time() - start
    wrong = [(p, t) for p, t in zip(predictions, labels, strict=True) if p != t]
    for p, t in wrong[: args.show]:
        print(f"  label {t!r}\n  read  {p!r}")
    print(json.dumps({"lines": len(labels), "cer": round(lines.cer(predictions, labels), 4),
                      "exact_match": round(1 - len(wrong) / len(labels), 4), "unfinished": unfinished,
                      "seconds": round(took, 1)}))


if __name__ == "__main__":
    main()
