"""A tiny optimum-layout encoder–decoder family with real MatMul weights, written to files (for methods per part).

Like tests/test_seq2seq_generate.py's counting family, the decoder's next token peaks at
(cache length + mean of the encoder states), so greedy generation counts from there up to END:
tokens come out right only if every step gets the keys/values the previous one returned. Here the
path goes through constant-weight MatMuls, which the methods quantize:
- encoder: last_hidden_state = pixel_values @ W_enc (identity);
- decoder keys: new_key = embedding[token] @ W_key (identity; the embedding has no zero entry);
- an attention branch reads the past keys through MatMul(query, keysᵀ) (so static INT8 quantizes that
  input) and adds `attention_weight` times its mean to the target (0: it does not change the count);
- LM head: logits = bump(vocab ids - target) @ W_lm, W_lm = LM_SCALE · identity by default: a
  zeroed LM head makes every logit 0 (the argmax is token 0 on every step, the sequence never ends).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quant.seq2seq.generate import Feeds, GenerationConfig

VOCAB = DIM = 32  # MatMul inner dimensions of 32: one weight-only block
START, END = 0, 20
LM_SCALE = 10.0
CONFIG = GenerationConfig(start_token=START, end_token=END, max_new_tokens=24)
FILES = {"encoder": "encoder_model.onnx", "decoder": "decoder_model.onnx", "decoder_with_past": "decoder_with_past_model.onnx"}
LM_HEAD = "lm_head"


def image(value: float, positions: int = 3) -> Feeds:
    """An input whose encoder states all equal `value`: the first generated token is round(1 + value)."""
    return {"pixel_values": np.full((1, positions, DIM), value, dtype=np.float32)}


def expected_tokens(value: float) -> list[int]:
    return list(range(round(1 + value), END))


def vocabulary() -> dict[int, str]:
    """Token id -> text: letters and digits, `<s>` for START and `</s>` for END."""
    chars = "abcdefghijklmnopqrstuvwxyz012345"
    return {i: ("<s>" if i == START else "</s>" if i == END else chars[i]) for i in range(VOCAB)}


def part_model(
    nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[str], constants: dict[str, np.ndarray]
) -> onnx.ModelProto:
    """One checked part graph: float outputs (K/V 4-D, others 3-D), `constants` as initializers, opset 17."""
    graph = helper.make_graph(
        nodes,
        "part",
        inputs,
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * (4 if "." in name else 3)) for name in outputs],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def decoder_models(
    key_nodes: list[onnx.NodeProto],
    head_nodes: Callable[[str, str], list[onnx.NodeProto]],
    constants: dict[str, np.ndarray],
    dim: int,
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """optimum's two decoder parts around one step: `key_nodes` make "new_key" [1, 1, T, dim] from input_ids;
    `head_nodes(attended_key, cross_key)` make "logits" from the self-attention keys (past ones for the with-past
    part) and the cross-attention keys; "present.0.decoder.key" is the whole cache in both parts. The first part
    returns the encoder states as cross keys/values, the with-past part concatenates its new key to the past."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "T"])

    def kv(name: str, length: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, length, dim])

    first = part_model(
        [*key_nodes,
         helper.make_node("Identity", ["new_key"], ["present.0.decoder.key"]),
         helper.make_node("Identity", ["new_key"], ["present.0.decoder.value"]),
         helper.make_node("Unsqueeze", ["encoder_hidden_states", "head_axis"], ["present.0.encoder.key"]),
         helper.make_node("Identity", ["present.0.encoder.key"], ["present.0.encoder.value"]),
         *head_nodes("present.0.decoder.key", "present.0.encoder.key")],
        [ids, helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, [1, "S", dim])],
        ["logits", "present.0.decoder.key", "present.0.decoder.value", "present.0.encoder.key", "present.0.encoder.value"],
        constants,
    )  # fmt: skip
    with_past = part_model(
        [*key_nodes,
         helper.make_node("Concat", ["past_key_values.0.decoder.key", "new_key"], ["present.0.decoder.key"], axis=2),
         helper.make_node("Concat", ["past_key_values.0.decoder.value", "new_key"], ["present.0.decoder.value"], axis=2),
         *head_nodes("past_key_values.0.decoder.key", "past_key_values.0.encoder.key")],
        [ids, kv("past_key_values.0.decoder.key", "P"), kv("past_key_values.0.decoder.value", "P"),
         kv("past_key_values.0.encoder.key", "S"), kv("past_key_values.0.encoder.value", "S")],
        ["logits", "present.0.decoder.key", "present.0.decoder.value"],
        constants,
    )  # fmt: skip
    return first, with_past


def _key_nodes() -> list[onnx.NodeProto]:
    return [
        helper.make_node("Gather", ["embedding", "input_ids"], ["token_embedding"]),  # [1, T, DIM]
        helper.make_node("MatMul", ["token_embedding", "w_key"], ["token_key"], name="key_proj"),
        helper.make_node("Unsqueeze", ["token_key", "head_axis"], ["new_key"]),  # [1, 1, T, DIM]
    ]


def _head_nodes(attended_key: str, cross_key: str) -> list[onnx.NodeProto]:
    """target = cache length + mean(cross keys) + attention_weight · mean(q · keysᵀ); logits = bump(ids - target) @ W_lm."""
    return [
        helper.make_node("MatMul", ["new_key", "w_query"], ["query"], name="query_proj"),
        helper.make_node("Transpose", [attended_key], ["keys_t"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["query", "keys_t"], ["scores"], name="attention"),
        helper.make_node("ReduceMean", ["scores"], ["attention_mean"], keepdims=0),
        helper.make_node("Mul", ["attention_mean", "attention_weight"], ["attention_shift"]),
        helper.make_node("Shape", ["present.0.decoder.key"], ["length"], start=2, end=3),
        helper.make_node("Cast", ["length"], ["length_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", [cross_key], ["offset"], keepdims=0),
        helper.make_node("Add", ["length_f", "offset"], ["count_target"]),
        helper.make_node("Add", ["count_target", "attention_shift"], ["target"]),
        helper.make_node("Sub", ["vocab_ids", "target"], ["distance"]),
        helper.make_node("Mul", ["distance", "distance"], ["squared"]),
        helper.make_node("Neg", ["squared"], ["negative"]),
        helper.make_node("Exp", ["negative"], ["bump"]),
        helper.make_node("Reshape", ["bump", "row_shape"], ["bump_row"]),
        helper.make_node("MatMul", ["bump_row", "w_lm"], ["logits_last"], name=LM_HEAD),
        helper.make_node("Identity", ["logits_last"], ["logits"]),
    ]


def write_family(folder: Path, *, lm_head: np.ndarray | None = None, attention_weight: float = 0.0, embedding_scale: float = 1.0) -> Path:
    """Write the three part files into `folder` and return it."""
    rng = np.random.default_rng(0)
    constants = {
        "embedding": (rng.uniform(0.5, 1.5, size=(VOCAB, DIM)) * embedding_scale).astype(np.float32),
        "w_key": np.eye(DIM, dtype=np.float32),
        "w_query": (np.eye(DIM) * 0.1).astype(np.float32),
        "attention_weight": np.array(attention_weight, dtype=np.float32),
        "vocab_ids": np.arange(VOCAB, dtype=np.float32),
        "row_shape": np.array([1, 1, VOCAB], dtype=np.int64),
        "head_axis": np.array([1], dtype=np.int64),
        "w_lm": (np.eye(VOCAB) * LM_SCALE if lm_head is None else lm_head).astype(np.float32),
    }
    encoder = part_model(
        [helper.make_node("MatMul", ["pixel_values", "w_enc"], ["last_hidden_state"], name="encoder_proj")],
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, "S", DIM])],
        ["last_hidden_state"],
        {"w_enc": np.eye(DIM, dtype=np.float32)},
    )
    first, with_past = decoder_models(_key_nodes(), _head_nodes, constants, DIM)
    folder.mkdir(parents=True, exist_ok=True)
    for part, model in (("encoder", encoder), ("decoder", first), ("decoder_with_past", with_past)):
        onnx.save(model, str(folder / FILES[part]))
    return folder
