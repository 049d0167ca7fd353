"""Greedy generation over an optimum-layout encoder–decoder family built with onnx.helper.

The tiny decoder "counts": each step appends its token's key to the self-attention cache, and its
logits peak at (cache length + mean of the cached encoder keys). So the tokens come out right only
if every step is fed the keys/values the previous step returned, and the encoder's states reach
the with-past decoder through the cached cross-attention keys.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from quant.seq2seq.capture import CapturedDecoderReader
from quant.seq2seq.generate import Family, Feeds, GenerationConfig, generate
from tests.seq2seq_family import decoder_models, part_model

VOCAB, DIM, START, END = 8, 4, 0, 5


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _kv(name: str, length: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, length, DIM])


def _step_nodes(self_key: str, cross_key: str) -> list[onnx.NodeProto]:
    """logits[v] = -(v - (cache length + mean(cross keys)))^2, shaped [1, 1, VOCAB]."""
    return [
        helper.make_node("Shape", [self_key], ["length"], start=2, end=3),
        helper.make_node("Cast", ["length"], ["length_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", [cross_key], ["offset"], keepdims=0),
        helper.make_node("Add", ["length_f", "offset"], ["target"]),
        helper.make_node("Sub", ["vocab_ids", "target"], ["distance"]),
        helper.make_node("Mul", ["distance", "distance"], ["squared"]),
        helper.make_node("Neg", ["squared"], ["scores"]),
        helper.make_node("Reshape", ["scores", "logits_shape"], ["logits"]),
    ]


def _new_key_nodes() -> list[onnx.NodeProto]:
    return [
        helper.make_node("Gather", ["embedding", "input_ids"], ["token_key"]),  # [1, T, DIM]
        helper.make_node("Unsqueeze", ["token_key", "head_axis"], ["new_key"]),  # [1, 1, T, DIM]
    ]


def tiny_family() -> Family:
    constants = {
        "embedding": np.arange(1, VOCAB * DIM + 1, dtype=np.float32).reshape(VOCAB, DIM),  # no zero row
        "vocab_ids": np.arange(VOCAB, dtype=np.float32),
        "logits_shape": np.array([1, 1, VOCAB], dtype=np.int64),
        "head_axis": np.array([1], dtype=np.int64),
    }
    encoder = part_model(
        [helper.make_node("Identity", ["pixel_values"], ["last_hidden_state"])],
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, "S", DIM])],
        ["last_hidden_state"], {},
    )  # fmt: skip
    # This family only counts: its step reads the length of the whole cache, not the keys in it.
    first, with_past = decoder_models(_new_key_nodes(), lambda _, cross_key: _step_nodes("present.0.decoder.key", cross_key), constants, DIM)
    return Family(_session(encoder), _session(first), _session(with_past))


def image(value: float) -> Feeds:
    return {"pixel_values": np.full((1, 3, DIM), value, dtype=np.float32)}


CONFIG = GenerationConfig(start_token=START, end_token=END, max_new_tokens=10)


@pytest.mark.parametrize(("encoder_value", "expected"), [(0.0, [1, 2, 3, 4]), (1.0, [2, 3, 4]), (2.0, [3, 4])])
def test_greedy_tokens_follow_the_fed_back_cache_and_the_encoder(encoder_value: float, expected: list[int]) -> None:
    result = generate(tiny_family(), image(encoder_value), CONFIG)
    assert result.tokens == expected
    assert result.finished
    assert len(result.step_logits) == len(expected) + 1  # the step that chose the end token too
    assert [int(np.argmax(row)) for row in result.step_logits] == [*expected, END]


def test_max_new_tokens_stops_an_unfinished_sequence() -> None:
    result = generate(tiny_family(), image(-10.0), GenerationConfig(START, END, max_new_tokens=3))
    assert not result.finished
    assert len(result.tokens) == 3 and END not in result.tokens


def test_observer_sees_each_step_fed_the_previous_steps_keys() -> None:
    seen: list[tuple[str, Feeds]] = []
    result = generate(tiny_family(), image(0.0), CONFIG, observe=lambda part, feeds: seen.append((part, dict(feeds))))
    parts = [part for part, _ in seen]
    assert parts == ["encoder", "decoder"] + ["decoder_with_past"] * len(result.tokens)
    fed_tokens = [int(feeds["input_ids"][0, 0]) for part, feeds in seen[1:]]
    assert fed_tokens == [START, *result.tokens]
    embedding = np.arange(1, VOCAB * DIM + 1, dtype=np.float32).reshape(VOCAB, DIM)
    for step, (_, feeds) in enumerate(seen[2:], start=1):
        past = feeds["past_key_values.0.decoder.key"]
        assert past.shape == (1, 1, step, DIM)
        np.testing.assert_array_equal(past[0, 0], embedding[fed_tokens[:step]])  # real keys, never zeros
        assert feeds["past_key_values.0.encoder.key"].shape == (1, 1, 3, DIM)


def test_teacher_forcing_feeds_the_given_tokens_and_scores_every_position() -> None:
    seen: list[Feeds] = []
    forced = [7, 7, 6]
    result = generate(tiny_family(), image(0.0), CONFIG, forced_tokens=forced, observe=lambda part, feeds: seen.append(feeds))
    assert [int(feeds["input_ids"][0, 0]) for feeds in seen[1:]] == [START, *forced]
    assert len(result.step_logits) == len(forced) + 1
    assert result.tokens == [1, 2, 3, 4]  # the greedy choice at each forced position


def test_a_with_past_input_no_step_returned_is_named() -> None:
    family = tiny_family()
    broken = Family(family.encoder, family.decoder, _session(part_model(
        [helper.make_node("Identity", ["past_key_values.0.cross.key"], ["logits"])],
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 1]), _kv("past_key_values.0.cross.key", "S")],
        ["logits"], {},
    )))
    with pytest.raises(ValueError, match=r"past_key_values\.0\.cross\.key"):
        generate(broken, image(0.0), CONFIG)


def test_captured_reader_streams_the_real_feeds_of_each_decoder_step() -> None:
    images = (image(value) for value in (1.0, 2.0, 3.0))  # a generator: the reader must stream it (no zero states: refused)
    reader = CapturedDecoderReader(tiny_family(), images, CONFIG, "decoder_with_past")
    first = reader.get_next()
    assert first is not None and reader.samples == 1  # only the first image generated so far
    feeds = [first]
    while (step := reader.get_next()) is not None:
        feeds.append(step)
    assert reader.samples == 3
    assert len(feeds) == 3 + 2 + 1  # one decoder_with_past step per generated token (tokens 2-4, 3-4, 4)
    embedding = np.arange(1, VOCAB * DIM + 1, dtype=np.float32).reshape(VOCAB, DIM)
    for fed in feeds:
        past = fed["past_key_values.0.decoder.key"][0, 0]
        fed_tokens = [START] + list(range(int(fed["input_ids"][0, 0]) - past.shape[0] + 1, int(fed["input_ids"][0, 0])))
        np.testing.assert_array_equal(past, embedding[fed_tokens])  # the keys FP32 generation made: never zeros
    assert {float(f["past_key_values.0.encoder.key"].mean()) for f in feeds} == {1.0, 2.0, 3.0}


def test_captured_reader_for_the_first_step_and_a_bad_part() -> None:
    reader = CapturedDecoderReader(tiny_family(), [image(1.0)], CONFIG, "decoder")
    fed = reader.get_next()
    assert fed is not None and set(fed) == {"input_ids", "encoder_hidden_states"} and reader.get_next() is None
    with pytest.raises(ValueError, match="decoder_with_past"):
        CapturedDecoderReader(tiny_family(), [], CONFIG, "encoder")
