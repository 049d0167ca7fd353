"""Generation gates on a tiny encoder–decoder family: the same family agrees with itself, a broken one fails."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from quant.gates import judge, latency_bounds
from quant.metrics.catalogue import CATALOGUE, GENERATION_METRICS, VARIANT_METRICS
from quant.recipe.schema import Gate
from quant.seq2seq.compare import compare_generation, first_divergence, reference_generations
from quant.seq2seq.generate import Family
from quant.seq2seq.latency import family_latency
from quant.seq2seq.parts import open_family
from quant.seq2seq.vocabulary import Vocabulary
from tests.seq2seq_family import CONFIG, END, LM_SCALE, VOCAB, expected_tokens, image, vocabulary, write_family

VALUES = [float(v) for v in np.linspace(6.0, 16.0, 40)]  # first tokens 7..17: sequences of 3 to 13 tokens


def _family(folder: Path, **kwargs: object) -> Family:
    return open_family(write_family(folder, **kwargs))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Family:
    return _family(tmp_path_factory.mktemp("fp32"))


def _swapped_head(a: int, b: int) -> np.ndarray:
    """The LM head with tokens a and b exchanged: the variant writes b where FP32 writes a, and back."""
    head = np.eye(VOCAB) * LM_SCALE
    head[:, [a, b]] = head[:, [b, a]]
    return head


def _text(tokens: list[int]) -> str:
    return Vocabulary.from_tokens(vocabulary()).decode(tokens)


def test_the_same_family_agrees_on_everything(fp32: Family, tmp_path: Path) -> None:
    labels = [_text(expected_tokens(v)) for v in VALUES]
    labels[0] = labels[0][:-1] + "z"  # FP32 misreads one label character: both families alike
    result = compare_generation(fp32, _family(tmp_path), [image(v) for v in VALUES], CONFIG, Vocabulary.from_tokens(vocabulary()), labels)
    metrics = result.metrics()
    assert set(metrics) == set(GENERATION_METRICS)
    assert metrics["seq_exact_match"] == 1.0 and metrics["seq_cer_vs_fp32"] == 0.0 and metrics["teacher_forced_top1"] == 1.0
    assert metrics["teacher_forced_kl"] == pytest.approx(0.0, abs=1e-9)
    perfect = {name: CATALOGUE[name].perfect for name in GENERATION_METRICS if CATALOGUE[name].perfect is not None}
    assert perfect and {name: metrics[name] for name in perfect} == pytest.approx(perfect, abs=1e-9)  # what the catalogue calls perfect
    assert metrics["seq_label_cer_delta"] == 0.0 and metrics["seq_label_cer"] == metrics["seq_label_cer_reference"] > 0
    assert math.isinf(metrics["first_divergence_median"]) and metrics["seq_early_divergence"] == 0.0 and metrics["seq_unfinished"] == 0.0
    intervals = result.intervals()
    assert intervals["seq_exact_match"].samples == len(VALUES) and intervals["seq_exact_match"].method == "wilson"
    assert intervals["seq_exact_match"].low > 0.9  # 40 of 40: Wilson's low end 40 / (40 + 1.96²)
    assert intervals["teacher_forced_top1"].method == "bootstrap"  # the steps of one line are not independent
    assert result.lines[5].variant_text == _text(expected_tokens(VALUES[5]))


def test_a_zeroed_lm_head_fails_every_generation_gate(fp32: Family, tmp_path: Path) -> None:
    broken = _family(tmp_path, lm_head=np.zeros((VOCAB, VOCAB)))
    result = compare_generation(fp32, broken, [image(v) for v in VALUES], CONFIG, Vocabulary.from_tokens(vocabulary()))
    metrics = result.metrics()
    assert metrics["seq_exact_match"] == 0.0 and metrics["seq_unfinished"] == 1.0
    assert metrics["teacher_forced_top1"] == 0.0 and metrics["teacher_forced_kl"] > 1.0
    assert metrics["first_divergence_median"] == 0.0 and metrics["seq_early_divergence"] == 1.0
    assert "seq_label_cer" not in metrics  # no labels given
    for gate in (Gate(metric="seq_exact_match", min=0.9), Gate(metric="teacher_forced_top1", min=0.99, must_clear="interval"),
                 Gate(metric="seq_cer_vs_fp32", max=0.02), Gate(metric="seq_unfinished", max=0.05)):  # fmt: skip
        verdict = judge(gate, {}, metrics, {}, intervals={"": result.intervals()})
        assert verdict.verdict == "failed", gate


def test_swapped_tokens_diverge_where_fp32_writes_them(fp32: Family, tmp_path: Path) -> None:
    values = [3.0, 8.0, 13.0, 14.0]  # sequences 4..19, 9..19, 14..19, 15..19: token 12 at 8, 3, absent, absent
    variant = _family(tmp_path, lm_head=_swapped_head(12, 13))
    fp32_generations = reference_generations(fp32, [image(v) for v in values], CONFIG)  # FP32 generated once, reused
    result = compare_generation(fp32_generations, variant, [image(v) for v in values], CONFIG, Vocabulary.from_tokens(vocabulary()), ids=list("abcd"))
    assert [line.first_divergence for line in result.lines] == [8, 3, None, None]
    assert result.lines[0].variant_text == _text([*range(4, 12), 13, 12, *range(14, END)])
    metrics = result.metrics()
    assert metrics["seq_exact_match"] == 0.5 and metrics["first_divergence_median"] == 5.5
    assert metrics["seq_cer_vs_fp32"] == pytest.approx(4 / sum(len(expected_tokens(v)) for v in values))
    steps = sum(len(expected_tokens(v)) + 1 for v in values)
    assert metrics["teacher_forced_top1"] == pytest.approx((steps - 4) / steps)  # 12 and 13 mispredicted in two lines
    assert [line.id for line in result.mismatches()] == ["a", "b"]
    assert result.divergence_summary()["positions"] == [3, 8]
    record = json.loads(json.dumps(result.to_dict()))
    assert record["samples"] == 4 and record["metrics"]["seq_exact_match"]["samples"] == 4 and len(record["mismatches"]) == 2


def test_gates_take_generation_metrics_like_any_variant_wide_metric(fp32: Family, tmp_path: Path) -> None:
    assert set(GENERATION_METRICS) <= set(VARIANT_METRICS)
    assert all(CATALOGUE[m].interval for m in GENERATION_METRICS if m != "first_divergence_median")
    result = compare_generation(fp32, _family(tmp_path), [image(v) for v in VALUES], CONFIG, Vocabulary.from_tokens(vocabulary()))
    gate = Gate(metric="seq_exact_match", min=0.9, must_clear="interval")
    passed = judge(gate, {}, result.metrics(), {}, intervals={"": result.intervals()})
    assert passed.verdict == "passed" and passed.interval is not None and passed.interval.samples == len(VALUES)
    assert judge(Gate(metric="first_divergence_median", min=4), {}, result.metrics(), {}).passed  # inf: no image diverged
    with pytest.raises(ValueError, match="has no interval"):
        Gate(metric="first_divergence_median", min=4, must_clear="interval")


def test_first_divergence_counts_a_shorter_sequence_as_leaving_where_it_ends() -> None:
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2, 3], [1, 2]) == 2
    assert first_divergence([], [4]) == 0


def test_stored_generations_must_match_the_samples(fp32: Family) -> None:
    stored = reference_generations(fp32, [image(6.0)], CONFIG)
    with pytest.raises(ValueError, match="more samples"):
        compare_generation(stored, fp32, [image(6.0), image(7.0)], CONFIG, Vocabulary.from_tokens(vocabulary()))
    with pytest.raises(ValueError, match="1 labels"):
        compare_generation(fp32, fp32, [image(6.0), image(7.0)], CONFIG, Vocabulary.from_tokens(vocabulary()), labels=["hijklm"])


def test_vocabulary_file_drops_special_tokens(tmp_path: Path) -> None:
    path = tmp_path / "vocab.json"
    path.write_text('{"<pad>": 0, "<s>": 1, "</s>": 2, "<": 3, "a": 4}')
    vocab = Vocabulary.from_file(path)
    assert vocab.decode([1, 4, 3, 2, 0, 99]) == "a<\ufffd"
    path.write_text('["a"]')
    with pytest.raises(Exception, match="token -> integer id"):
        Vocabulary.from_file(path)


def test_family_latency_ratios_per_image_and_per_token(fp32: Family, tmp_path: Path) -> None:
    looping = _family(tmp_path, lm_head=np.zeros((VOCAB, VOCAB)))  # never ends: max_new_tokens steps per image
    images = [image(v) for v in (6.0, 10.0)]
    result = family_latency(fp32, looping, images, CONFIG, rounds=6, warmup=1)
    assert result.reference_tokens == sum(len(expected_tokens(v)) + 1 for v in (6.0, 10.0))
    assert result.variant_tokens == 2 * CONFIG.max_new_tokens
    assert result.rounds == 6 and result.image_interval.samples == 6 and result.images == 2
    factor = result.reference_tokens / result.variant_tokens
    assert result.token_ratio == pytest.approx(result.image_ratio * factor)
    assert result.token_interval.low == pytest.approx(result.image_interval.low * factor)
    assert set(result.metrics()) == {"image_latency_ratio", "token_latency_ratio"}
    gates = [Gate(metric="token_latency_ratio", max=0.9), Gate(metric="latency_ratio", max=1.1)]
    assert latency_bounds(gates, "token_latency_ratio") == [(None, 0.9)] and latency_bounds(gates) == [(None, 1.1)]


def test_teacher_forcing_reuses_an_agreeing_run_and_forces_a_diverging_one(fp32: Family, tmp_path: Path) -> None:
    variant = _family(tmp_path, lm_head=_swapped_head(12, 13))
    fed: list[int] = []
    counted = Family(variant.encoder, variant.decoder, _Counting(variant.decoder_with_past, fed))  # type: ignore[arg-type]
    compare_generation(fp32, counted, [image(14.0)], CONFIG, Vocabulary.from_tokens(vocabulary()))  # 15..19: no 12 or 13
    assert len(fed) == len(expected_tokens(14.0))  # one greedy run, no second one for teacher forcing
    fed.clear()
    compare_generation(fp32, counted, [image(8.0)], CONFIG, Vocabulary.from_tokens(vocabulary()))  # 9..19 with 12, 13
    assert len(fed) == 2 * len(expected_tokens(8.0))  # the greedy run and the forced one
    assert fed[len(fed) // 2 :] == expected_tokens(8.0)  # forced: FP32's tokens, not its own


class _Counting:
    """A session that records the token it is fed on every run."""

    def __init__(self, session: object, fed: list[int]) -> None:
        self.session, self.fed = session, fed
        self.get_inputs, self.get_outputs = session.get_inputs, session.get_outputs  # type: ignore[attr-defined]

    def run(self, names: object, feeds: dict) -> list:
        self.fed.append(int(feeds["input_ids"][0, 0]))
        return self.session.run(names, feeds)  # type: ignore[attr-defined]
