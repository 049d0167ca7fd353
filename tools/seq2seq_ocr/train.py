#!/usr/bin/env python3
"""Train the seq2seq OCR recognizer on lines rendered on the fly (PyTorch: a development tool only).

One worker process renders batches (tools/make_ocr_data.py's renderer) while the main process
trains with one thread. The learning rate warms up, then follows a cosine to zero over --steps.
Checkpoints (model + optimiser + step) go to --out every --save-every seconds and at the end;
--resume continues from the last one. Greedy CER on the `tune` split is logged as it goes.

Usage: nice -n 5 python tools/seq2seq_ocr/train.py --seed 0 --steps 12000 --out /work/seq2seq-train
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import lines
import numpy as np
import torch
from model import Config, Recognizer
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

TRAIN_STREAM = 2


class RenderedLines(IterableDataset):
    """An endless stream of batches; batch k of worker w comes from seed [seed, 2, w, k]."""

    def __init__(self, seed: int, batch: int, exclude: frozenset[str]) -> None:
        self.seed, self.batch, self.exclude = seed, batch, exclude

    def __iter__(self):
        info = get_worker_info()
        worker = 0 if info is None else info.id
        k = 0
        while True:
            rng = np.random.default_rng([self.seed, TRAIN_STREAM, worker, k])
            texts, pixels = [], []
            for _ in range(self.batch):
                text, img = lines.make_sample(rng, self.exclude)
                if rng.random() < 0.5:  # as the held-out PNGs are stored: a 16-colour palette
                    img = img.convert("RGB").quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
                texts.append(text)
                pixels.append(lines.to_pixels(img))
            yield collate(texts, pixels)
            k += 1


def collate(texts: list[str], pixels: list[np.ndarray]) -> dict[str, torch.Tensor]:
    ids = [lines.encode(t) for t in texts]
    tokens = torch.full((len(ids), max(map(len, ids))), lines.PAD_ID, dtype=torch.long)
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = torch.tensor(row)
    valid = torch.tensor([math.ceil(p.shape[2] / 8) for p in pixels])
    return {"pixels": torch.from_numpy(lines.pad_batch(pixels)), "tokens": tokens, "valid": valid}


def heldout_texts(root: Path) -> frozenset[str]:
    return frozenset(t for split in ("calib", "tune", "eval") for _, t in lines.read_split(root / split))


def tune_cer(model: Recognizer, folder: Path, limit: int) -> float:
    model.eval()
    predictions, labels = [], []
    for name, text in lines.read_split(folder)[:limit]:
        pixels = lines.pad_batch([lines.to_pixels(Image.open(folder / name))])
        ids = model.greedy(torch.from_numpy(pixels), lines.MAX_CHARS + 1, lines.BOS_ID, lines.EOS_ID)[0]
        predictions.append(lines.decode(ids))
        labels.append(text)
    model.train()
    return lines.cer(predictions, labels)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--ctc-weight", type=float, default=0.3, help="weight of the auxiliary CTC loss on the encoder")
    ap.add_argument("--heldout", type=Path, default=Path("calibration_data/seq2seq_lines"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--save-every", type=float, default=300.0, help="seconds between checkpoints")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--tune-every", type=int, default=1000, help="steps between greedy CER checks on 32 tune lines")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = Config(vocab_size=len(lines.VOCAB))
    model = Recognizer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    step, elapsed_before = 0, 0.0
    ckpt = args.out / "last.pt"
    if args.resume and ckpt.exists():
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed_before = state["step"], state["elapsed"]
    exported = sum(p.numel() for part in (model.encoder, model.decoder) for p in part.parameters())
    ctc_only = sum(p.numel() for p in model.ctc_head.parameters())
    print(f"parameters: {exported} exported (+{ctc_only} CTC head, training only)  config: {cfg}", flush=True)
    data = RenderedLines(args.seed, args.batch, heldout_texts(args.heldout))
    loader = DataLoader(data, batch_size=None, num_workers=1, prefetch_factor=4)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=lines.PAD_ID)
    ctc_fn = torch.nn.CTCLoss(blank=lines.PAD_ID, zero_infinity=True)  # <pad> is never a character: the blank
    start, last_save, running = time.time(), time.time(), []

    def save() -> None:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                 "elapsed": elapsed_before + time.time() - start, "config": cfg.__dict__, "seed": args.seed}
        torch.save(state, args.out / "last.tmp")
        (args.out / "last.tmp").replace(ckpt)

    model.train()
    for batch in loader:
        if step >= args.steps:
            break
        # Data stream position = step: a resumed run skips nothing but sees new batches (same seeds).
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        tokens = batch["tokens"]
        logits, ctc_logits = model(batch["pixels"], tokens[:, :-1], batch["valid"])
        attention_loss = loss_fn(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        characters = tokens[:, 1:-1]  # without <s>; </s> and padding are cut by target lengths
        target_lengths = (tokens > lines.EOS_ID).sum(1)
        log_probs = ctc_logits.log_softmax(-1).transpose(0, 1)
        ctc_loss = ctc_fn(log_probs, characters, batch["valid"], target_lengths)
        loss = (1 - args.ctc_weight) * attention_loss + args.ctc_weight * ctc_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(attention_loss.item())
        step += 1
        if step % 50 == 0:
            took = elapsed_before + time.time() - start
            lr = round(lr_at(step, args.steps, args.lr, args.warmup), 6)
            print(json.dumps({"step": step, "decoder_loss": round(float(np.mean(running)), 4), "lr": lr,
                              "elapsed_s": round(took), "steps_per_s": round(step / took, 3)}), flush=True)
            running = []
        if step % args.tune_every == 0:
            print(json.dumps({"step": step, "tune_cer_32": round(tune_cer(model, args.heldout / "tune", 32), 4)}), flush=True)
        if time.time() - last_save > args.save_every:
            save()
            last_save = time.time()
    save()
    print(json.dumps({"done": step, "tune_cer": round(tune_cer(model, args.heldout / "tune", 64), 4),
                      "elapsed_s": round(elapsed_before + time.time() - start)}), flush=True)


if __name__ == "__main__":
    main()
