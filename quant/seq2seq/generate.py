"""Greedy generation with an encoder–decoder ONNX family in optimum's layout, on onnxruntime.

The encoder runs once; `decoder_model` takes the start token and the encoder states; every later
step runs `decoder_with_past_model` on the last token and the keys/values the previous step
returned (`present.X` feeds `past_key_values.X`; cross-attention keys/values returned by the first
step are fed unchanged). Names are read from the sessions, not assumed beyond optimum's
conventions. Each step's logits are kept, and an optional observer sees every decoder feed: the
base for generation gates (variant vs FP32 text, teacher-forced agreement) and for calibrating
decoder parts on keys/values captured from real FP32 generation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
ENCODER_STATES = "encoder_hidden_states"
ENCODER_MASK = "encoder_attention_mask"
INPUT_IDS = "input_ids"

Feeds = dict[str, np.ndarray]
# Called with the part's name ("decoder" or "decoder_with_past") and exactly what it is fed.
StepObserver = Callable[[str, Feeds], None]


@dataclass(frozen=True)
class Family:
    """The three sessions of an optimum seq2seq export."""

    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    decoder_with_past: ort.InferenceSession


@dataclass(frozen=True)
class GenerationConfig:
    start_token: int
    end_token: int
    max_new_tokens: int


@dataclass
class Generation:
    """One sequence: the generated tokens (end token excluded) and the logits of every step."""

    tokens: list[int] = field(default_factory=list)
    step_logits: list[np.ndarray] = field(default_factory=list)  # one [vocab] row per step
    finished: bool = False  # the end token was produced within max_new_tokens


def _input_names(session: ort.InferenceSession) -> list[str]:
    return [i.name for i in session.get_inputs()]


def _output_names(session: ort.InferenceSession) -> list[str]:
    return [o.name for o in session.get_outputs()]


def _run(session: ort.InferenceSession, part: str, feeds: Feeds, observe: StepObserver | None) -> dict[str, np.ndarray]:
    if observe is not None:
        observe(part, feeds)
    return dict(zip(_output_names(session), session.run(None, feeds), strict=True))


def _encoder_feeds(session: ort.InferenceSession, states: np.ndarray, wanted: Sequence[str]) -> Feeds:
    feeds: Feeds = {}
    if ENCODER_STATES in wanted:
        feeds[ENCODER_STATES] = states
    if ENCODER_MASK in wanted:  # one unpadded image: every encoder position is real
        feeds[ENCODER_MASK] = np.ones(states.shape[:2], dtype=np.int64)
    return feeds


def _past_from(outputs: dict[str, np.ndarray], past: Feeds) -> Feeds:
    """The next step's past: this step's presents, keeping earlier entries it did not return."""
    updated = dict(past)
    for name, value in outputs.items():
        if name.startswith(PRESENT_PREFIX):
            updated[PAST_PREFIX + name[len(PRESENT_PREFIX) :]] = value
    return updated


def generate(
    family: Family,
    encoder_feeds: Feeds,
    config: GenerationConfig,
    forced_tokens: Sequence[int] | None = None,
    observe: StepObserver | None = None,
) -> Generation:
    """Greedy decoding of one input (batch of one).

    With `forced_tokens` the decoder is fed those tokens instead of its own choices (teacher
    forcing): one step per forced token plus the step after the last, so `step_logits[i]` is the
    prediction of token i given forced_tokens[:i]; `tokens` still holds the greedy choice per step.
    """
    states = next(iter(_run(family.encoder, "encoder", encoder_feeds, observe).values()))
    first_inputs = _input_names(family.decoder)
    past_inputs = _input_names(family.decoder_with_past)
    result = Generation()
    past: Feeds = {}
    token = config.start_token
    steps = config.max_new_tokens if forced_tokens is None else len(forced_tokens) + 1
    for step in range(steps):
        ids = np.array([[token]], dtype=np.int64)
        if step == 0:
            feeds = {INPUT_IDS: ids, **_encoder_feeds(family.decoder, states, first_inputs)}
            outputs = _run(family.decoder, "decoder", feeds, observe)
        else:
            feeds = {INPUT_IDS: ids, **_encoder_feeds(family.decoder_with_past, states, past_inputs)}
            missing = [name for name in past_inputs if name.startswith(PAST_PREFIX) and name not in past]
            if missing:
                raise ValueError(f"decoder_with_past needs {missing}, which no earlier step returned as present.*")
            feeds.update({name: past[name] for name in past_inputs if name.startswith(PAST_PREFIX)})
            outputs = _run(family.decoder_with_past, "decoder_with_past", feeds, observe)
        logits = outputs["logits"][0, -1]
        result.step_logits.append(logits)
        past = _past_from(outputs, past)
        choice = int(np.argmax(logits))
        if forced_tokens is not None:
            result.tokens.append(choice)
            token = forced_tokens[step] if step < len(forced_tokens) else token
            continue
        if choice == config.end_token:
            result.finished = True
            break
        result.tokens.append(choice)
        token = choice
    return result
