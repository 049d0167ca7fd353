"""A small TrOCR-style recognizer: CNN + transformer image encoder, transformer decoder with KV cache.

Attention is written out (MatMul, Softmax) rather than nn.MultiheadAttention so the ONNX export
has the plain MatMul weights weight-only quantization works on, and the cache is explicit:
self-attention keys/values grow by one step per call, cross-attention keys/values are computed
once from the encoder states and passed back in (optimum's `past_key_values.{i}.encoder.*`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Config:
    vocab_size: int
    d_model: int = 128
    heads: int = 4
    ffn: int = 512
    encoder_layers: int = 2
    decoder_layers: int = 3
    max_positions: int = 50  # decoder tokens: <s> + 48 characters + </s>
    max_encoder_positions: int = 128  # encoder steps: width / 8


def split_heads(x: Tensor, heads: int) -> Tensor:
    b, t, d = x.shape
    return x.reshape(b, t, heads, d // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class Projections(nn.Module):
    """Query, key, value and output projections of one multi-head attention."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.q, self.k, self.v, self.out = (nn.Linear(cfg.d_model, cfg.d_model) for _ in range(4))


class SelfAttention(Projections):

    def forward(
        self, x: Tensor, bias: Tensor | None, past: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = (split_heads(proj(x), self.heads) for proj in (self.q, self.k, self.v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        return self.out(merge_heads(attend(q, k, v, bias))), (k, v)


class CrossAttention(Projections):
    def forward(
        self, x: Tensor, kv: tuple[Tensor, Tensor] | None, bias: Tensor | None, memory: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """With `memory` (first step) the keys/values are computed here, inside this module's own
        call, so the exported MatMuls are named /decoder/layers.N/cross_attn/k/MatMul; later steps get `kv`."""
        if kv is None:
            assert memory is not None
            kv = split_heads(self.k(memory), self.heads), split_heads(self.v(memory), self.heads)
        return self.out(merge_heads(attend(split_heads(self.q(x), self.heads), kv[0], kv[1], bias))), kv


def feed_forward(cfg: Config) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cfg.d_model, cfg.ffn), nn.GELU(), nn.Linear(cfg.ffn, cfg.d_model))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ffn = feed_forward(cfg)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), bias)[0]
        return x + self.ffn(self.norm2(x))


def conv_block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def sinusoid(length: int, dim: int) -> Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


class Encoder(nn.Module):
    """pixel_values [B, 3, 32, W] (W a multiple of 8) -> last_hidden_state [B, W/8, d]."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        # Strided convolutions: most of the work at full resolution is skipped (2 cores, shared).
        self.cnn = nn.Sequential(
            *conv_block(3, 16, 2),  # 16 x W/2
            *conv_block(16, 48, 2),  # 8 x W/4
            *conv_block(48, 64, 2),  # 4 x W/8
            *conv_block(64, 96, 1),
        )
        self.proj = nn.Linear(96 * 4, cfg.d_model)
        self.register_buffer("positions", sinusoid(cfg.max_encoder_positions, cfg.d_model), persistent=False)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, pixel_values: Tensor, key_bias: Tensor | None = None) -> Tensor:
        f = self.cnn(pixel_values)  # B, C, 4, S
        b, c, h, s = f.shape
        x = self.proj(f.permute(0, 3, 1, 2).reshape(b, s, c * h)) + self.positions[:s]
        for layer in self.layers:
            x = layer(x, key_bias)
        return self.norm(x)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn = SelfAttention(cfg)
        self.cross_attn = CrossAttention(cfg)
        self.ffn = feed_forward(cfg)

    def forward(
        self,
        x: Tensor,
        causal: Tensor | None,
        cross_kv: tuple[Tensor, Tensor] | None,
        cross_bias: Tensor | None,
        past: tuple[Tensor, Tensor] | None,
        memory: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        attn, present = self.self_attn(self.norm1(x), causal, past)
        x = x + attn
        attn, cross_kv = self.cross_attn(self.norm2(x), cross_kv, cross_bias, memory)
        x = x + attn
        return x + self.ffn(self.norm3(x)), present, cross_kv


KV = tuple[Tensor, Tensor]


class Decoder(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(
        self,
        input_ids: Tensor,
        cross_kv: list[KV] | None,
        past: list[KV] | None = None,
        cross_bias: Tensor | None = None,
        memory: Tensor | None = None,
    ) -> tuple[Tensor, list[KV], list[KV]]:
        """Logits, self-attention presents and cross-attention keys/values (computed from `memory`
        when `cross_kv` is None: the first step)."""
        t = input_ids.shape[1]
        start = 0 if past is None else past[0][0].shape[2]
        positions = torch.arange(t, device=input_ids.device) + start
        x = self.embed(input_ids) + self.positions(positions)
        total = start + t
        # Query i (absolute position start+i) may see keys 0..start+i; compared, not triu, so the
        # exported graph takes `start` from the past's shape.
        blocked = torch.arange(total, device=input_ids.device)[None, :] > positions[:, None]
        causal = torch.zeros(t, total, device=input_ids.device).masked_fill(blocked, float("-inf"))
        presents, crosses = [], []
        for i, layer in enumerate(self.layers):
            layer_kv = None if cross_kv is None else cross_kv[i]
            x, present, layer_kv = layer(x, causal, layer_kv, cross_bias, None if past is None else past[i], memory)
            presents.append(present)
            crosses.append(layer_kv)
        return self.lm_head(self.norm(x)), presents, crosses


class Recognizer(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # Training only (not exported): a CTC head on the encoder states, the hybrid CTC/attention
        # objective, so the encoder learns to locate characters before the decoder learns to attend.
        self.ctc_head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, valid_steps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher-forced decoder logits and CTC logits; valid_steps [B] masks a batch's right padding."""
        bias = None
        if valid_steps is not None:
            steps = torch.arange(pixel_values.shape[3] // 8, device=pixel_values.device)
            bias = torch.zeros(len(valid_steps), 1, 1, len(steps), device=pixel_values.device)
            bias = bias.masked_fill((steps[None, :] >= valid_steps[:, None])[:, None, None, :], float("-inf"))
        memory = self.encoder(pixel_values, bias)
        logits, _, _ = self.decoder(input_ids, None, None, bias, memory)
        return logits, self.ctc_head(memory)

    @torch.no_grad()
    def greedy(self, pixel_values: Tensor, max_tokens: int, bos: int, eos: int) -> list[list[int]]:
        """Greedy decoding with the KV cache (batch of one or of equal, unpadded widths)."""
        memory = self.encoder(pixel_values)
        ids = torch.full((pixel_values.shape[0], 1), bos, dtype=torch.long)
        logits, past, cross = self.decoder(ids, None, memory=memory)
        out = [[] for _ in range(pixel_values.shape[0])]
        done = torch.zeros(pixel_values.shape[0], dtype=torch.bool)
        for _ in range(max_tokens):
            nxt = logits[:, -1].argmax(-1)
            for b in range(len(out)):
                if not done[b] and nxt[b] != eos:
                    out[b].append(int(nxt[b]))
            done |= nxt == eos
            if bool(done.all()):
                break
            logits, past, _ = self.decoder(nxt[:, None], cross, past)
        return out
