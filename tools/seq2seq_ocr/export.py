#!/usr/bin/env python3
"""Export a trained checkpoint in optimum's seq2seq ONNX layout (PyTorch: a development tool only).

  encoder_model.onnx            pixel_values -> last_hidden_state
  decoder_model.onnx            input_ids, encoder_hidden_states
                                -> logits, present.{i}.decoder.{key,value}, present.{i}.encoder.{key,value}
  decoder_with_past_model.onnx  input_ids, past_key_values.{i}.decoder.{key,value}, past_key_values.{i}.encoder.{key,value}
                                -> logits, present.{i}.decoder.{key,value}
  vocab.json, generation_config.json

Keys/values are [batch, heads, sequence, head_dim]. The cross-attention keys/values are computed
once by decoder_model (as optimum's decoders do), so decoder_with_past has no encoder_hidden_states.
There is no encoder_attention_mask: batches are one image (or images of one width), unpadded.
The merged `If` form (decoder_model_merged.onnx) is not exported.

Usage: python tools/seq2seq_ocr/export.py --checkpoint /work/seq2seq-train/last.pt --out models/seq2seq-ocr
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lines
import torch
from model import Config, Recognizer
from torch import Tensor, nn

OPSET = 17


class EncoderPart(nn.Module):
    def __init__(self, model: Recognizer) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.encoder(pixel_values)


class DecoderFirstPart(nn.Module):
    def __init__(self, model: Recognizer) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(self, input_ids: Tensor, encoder_hidden_states: Tensor) -> tuple[Tensor, ...]:
        logits, presents, cross = self.decoder(input_ids, None, memory=encoder_hidden_states)
        flat: list[Tensor] = [logits]
        for (k, v), (ck, cv) in zip(presents, cross, strict=True):
            flat += [k, v, ck, cv]
        return tuple(flat)


class DecoderWithPastPart(nn.Module):
    def __init__(self, model: Recognizer) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(self, input_ids: Tensor, *past_flat: Tensor) -> tuple[Tensor, ...]:
        groups = [past_flat[i : i + 4] for i in range(0, len(past_flat), 4)]
        past = [(g[0], g[1]) for g in groups]
        cross = [(g[2], g[3]) for g in groups]
        logits, presents, _ = self.decoder(input_ids, cross, past)
        flat: list[Tensor] = [logits]
        for k, v in presents:
            flat += [k, v]
        return tuple(flat)


def kv_names(prefix: str, layers: int, with_encoder: bool) -> list[str]:
    names = []
    for i in range(layers):
        names += [f"{prefix}.{i}.decoder.key", f"{prefix}.{i}.decoder.value"]
        if with_encoder:
            names += [f"{prefix}.{i}.encoder.key", f"{prefix}.{i}.encoder.value"]
    return names


def export(module: nn.Module, args: tuple[Tensor, ...], path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    # The exporter restores the wrapper's own mode afterwards: a fresh wrapper is in training mode,
    # which would switch the shared BatchNorms to batch statistics for everything after the export.
    module.eval()
    torch.onnx.export(
        module, args, str(path), dynamo=False, opset_version=OPSET, input_names=inputs, output_names=outputs,
        dynamic_axes=axes, do_constant_folding=True, external_data=False,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("models/seq2seq-ocr"))
    ap.add_argument("--verify-on", type=Path, default=Path("calibration_data/seq2seq_lines/tune"))
    args = ap.parse_args()
    state = torch.load(args.checkpoint)
    cfg = Config(**state["config"])
    model = Recognizer(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    layers, heads, head_dim = cfg.decoder_layers, cfg.heads, cfg.d_model // cfg.heads

    pixels = torch.zeros(1, 3, lines.HEIGHT, 160)
    export(EncoderPart(model), (pixels,), args.out / "encoder_model.onnx", ["pixel_values"], ["last_hidden_state"],
           {"pixel_values": {0: "batch_size", 3: "width"}, "last_hidden_state": {0: "batch_size", 1: "encoder_sequence_length"}})

    memory = model.encoder(pixels)
    ids = torch.tensor([[lines.BOS_ID]])
    present_self = kv_names("present", layers, with_encoder=False)
    present_all = kv_names("present", layers, with_encoder=True)
    axes = {"input_ids": {0: "batch_size", 1: "decoder_sequence_length"},
            "encoder_hidden_states": {0: "batch_size", 1: "encoder_sequence_length"},
            "logits": {0: "batch_size", 1: "decoder_sequence_length"}}
    for name in present_all:
        axes[name] = {0: "batch_size", 2: "encoder_sequence_length_out" if ".encoder." in name else "decoder_sequence_length"}
    export(DecoderFirstPart(model), (ids, memory), args.out / "decoder_model.onnx",
           ["input_ids", "encoder_hidden_states"], ["logits", *present_all], axes)

    first = DecoderFirstPart(model)(ids, memory)
    past_names = kv_names("past_key_values", layers, with_encoder=True)
    axes = {"input_ids": {0: "batch_size", 1: "decoder_sequence_length"}, "logits": {0: "batch_size", 1: "decoder_sequence_length"}}
    for name in past_names:
        axes[name] = {0: "batch_size", 2: "encoder_sequence_length_out" if ".encoder." in name else "past_decoder_sequence_length"}
    for name in present_self:
        axes[name] = {0: "batch_size", 2: "past_decoder_sequence_length + 1"}
    export(DecoderWithPastPart(model), (ids, *first[1:]), args.out / "decoder_with_past_model.onnx",
           ["input_ids", *past_names], ["logits", *present_self], axes)

    (args.out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(lines.VOCAB)}, ensure_ascii=False, indent=0) + "\n")
    generation = {"decoder_start_token_id": lines.BOS_ID, "bos_token_id": lines.BOS_ID, "eos_token_id": lines.EOS_ID,
                  "pad_token_id": lines.PAD_ID, "max_length": cfg.max_positions,
                  "num_decoder_layers": layers, "num_attention_heads": heads, "head_dim": head_dim}
    (args.out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    print(f"exported step {state['step']} to {args.out}: {head_dim=} {layers=} {heads=}")
    print(f"onnxruntime vs torch, greedy on {args.verify_on}: max |logit difference| {verify(model, args.out, args.verify_on):.2e}")


def verify(model: Recognizer, folder: Path, images: Path) -> float:
    """Greedy-decode a few held-out lines with the three ONNX files, torch fed the same tokens: the largest logit gap."""
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    parts = ("encoder_model", "decoder_model", "decoder_with_past_model")
    encoder, first, with_past = (ort.InferenceSession(str(folder / f"{name}.onnx")) for name in parts)
    worst = 0.0
    for name, _ in lines.read_split(images)[:4]:
        pixels = lines.pad_batch([lines.to_pixels(Image.open(images / name))])
        expected = model.greedy(torch.from_numpy(pixels), lines.MAX_CHARS + 1, lines.BOS_ID, lines.EOS_ID)[0]
        memory = encoder.run(None, {"pixel_values": pixels})[0]
        outputs = first.run(None, {"input_ids": np.array([[lines.BOS_ID]]), "encoder_hidden_states": memory})
        names = [o.name for o in first.get_outputs()]
        past = {n.replace("present.", "past_key_values."): v for n, v in zip(names[1:], outputs[1:], strict=True)}
        tokens, ids = [], torch.tensor([[lines.BOS_ID]])
        with torch.no_grad():
            torch_logits, torch_past, cross = model.decoder(ids, None, memory=model.encoder(torch.from_numpy(pixels)))
        while True:
            worst = max(worst, float(np.abs(outputs[0][0, -1] - torch_logits[0, -1].numpy()).max()))
            token = int(outputs[0][0, -1].argmax())
            if token == lines.EOS_ID or len(tokens) > lines.MAX_CHARS:
                break
            tokens.append(token)
            outputs = with_past.run(None, {"input_ids": np.array([[token]]), **past})
            names = [o.name for o in with_past.get_outputs()]
            past.update({n.replace("present.", "past_key_values."): v for n, v in zip(names[1:], outputs[1:], strict=True)})
            with torch.no_grad():
                torch_logits, torch_past, _ = model.decoder(torch.tensor([[token]]), cross, torch_past)
        if tokens != expected:  # torch fed the same tokens gave close logits: a near tie, or a real difference
            print(f"  {name}: onnxruntime read {lines.decode(tokens)!r}, torch {lines.decode(expected)!r}")
    if worst > 1e-3:
        raise SystemExit(f"the exported decoder's logits differ from torch's by {worst:.2e}")
    return worst


if __name__ == "__main__":
    main()
