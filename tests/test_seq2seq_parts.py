"""Methods per part of a tiny encoder–decoder family; static INT8 of a decoder calibrated on captured, never zero, keys."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quant.errors import BuildError
from quant.methods.weight_only import nbits_counts
from quant.recipe.schema import DynamicInt8Options, Fp16Options, StaticInt8Options, WeightOnlyOptions
from quant.seq2seq.capture import CapturedFeeds, ZeroStateError
from quant.seq2seq.generate import Family, generate
from quant.seq2seq.parts import PART_FILES, build_part, open_family, part_feeds
from tests.seq2seq_family import CONFIG, LM_HEAD, expected_tokens, image, write_family

VALUES = (6.0, 9.3, 13.0)


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_family(tmp_path_factory.mktemp("fp32"), attention_weight=1e-3)  # the attention branch moves the target a little


def _variant(fp32_dir: Path, out: Path, per_part: dict[str, object], feeds_for: set[str] = frozenset()) -> tuple[Path, dict[str, dict]]:
    """Build each named part with its options (the others copied) and return the folder and each build's details."""
    out.mkdir()
    fp32 = open_family(fp32_dir)
    details = {}
    for part, file in PART_FILES.items():
        if part not in per_part:
            shutil.copy(fp32_dir / file, out / file)
            continue
        feeds = part_feeds(fp32, part, [image(v) for v in VALUES], CONFIG) if part in feeds_for else None
        result = build_part(per_part[part], part, fp32_dir / file, out / file, work_dir=out / "work", cache_dir=out / "cache", feeds=feeds)  # type: ignore[arg-type]
        details[part] = result.details
    return out, details


def _reads_like_fp32(family: Family) -> bool:
    return all(generate(family, image(v), CONFIG).tokens == expected_tokens(v) for v in VALUES)


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_dynamic_int8_and_fp16_per_part(fp32_dir: Path, tmp_path: Path) -> None:
    dynamic = DynamicInt8Options(method="dynamic_int8", op_types=["MatMul"])
    folder, details = _variant(fp32_dir, tmp_path / "dyn", {"decoder": dynamic, "decoder_with_past": dynamic})
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _ops(folder / PART_FILES["decoder_with_past"])
    assert "MatMulInteger" not in _ops(folder / PART_FILES["encoder"])  # copied, not built
    assert details["decoder"]["part"] == "decoder" and details["decoder"]["method"] == "dynamic_int8"
    assert _reads_like_fp32(open_family(folder))

    fp16 = Fp16Options(method="fp16")
    folder, _ = _variant(fp32_dir, tmp_path / "fp16", dict.fromkeys(PART_FILES, fp16))
    for file in PART_FILES.values():
        weights = onnx.load(str(folder / file)).graph.initializer
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in weights), file
    assert _reads_like_fp32(open_family(folder))


def test_weight_only_int4_with_the_lm_head_at_8_bits(fp32_dir: Path, tmp_path: Path) -> None:
    options = WeightOnlyOptions(method="weight_only", bits=4, block_size=32, accuracy_level=4, overrides={LM_HEAD: {"bits": 8}})
    folder, _ = _variant(fp32_dir, tmp_path / "wo", {"decoder_with_past": options})
    model = onnx.load(str(folder / PART_FILES["decoder_with_past"]))
    # onnxruntime names each MatMulNBits after its MatMul, with a _Q<bits> suffix
    bits = {n.name.rsplit("_Q", 1)[0]: next(a.i for a in n.attribute if a.name == "bits") for n in model.graph.node if n.op_type == "MatMulNBits"}
    assert bits == {LM_HEAD: 8, "key_proj": 4, "query_proj": 4}
    assert nbits_counts(model)["bits=8 block=32"] == 1
    assert _reads_like_fp32(open_family(folder))


def _qdq_scale(model: onnx.ModelProto, tensor: str) -> float:
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return float(weights[node.input[1]])


def test_static_int8_decoder_is_calibrated_on_the_keys_fp32_generation_made(fp32_dir: Path, tmp_path: Path) -> None:
    options = StaticInt8Options(method="static_int8", calibrate="minmax", op_types=["MatMul"], activation_type="uint8")
    folder, details = _variant(fp32_dir, tmp_path / "static", {"decoder_with_past": options}, feeds_for={"decoder_with_past"})
    model = onnx.load(str(folder / PART_FILES["decoder_with_past"]))
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(folder / PART_FILES["decoder_with_past"])
    # The attention MatMul reads the past keys transposed ("keys_t"): their range is the largest key FP32 generation
    # fed, and uint8 over [0, max] has scale max / 255. Calibrated on zeros instead, the range would be [0, 0].
    past_max = max(
        float(f["past_key_values.0.decoder.key"].max())
        for f in CapturedFeeds(open_family(fp32_dir), [image(v) for v in VALUES], CONFIG, "decoder_with_past")
    )
    assert past_max > 1.0
    assert _qdq_scale(model, "keys_t") == pytest.approx(past_max / 255, rel=1e-5)
    assert details["decoder_with_past"]["calibrated_tensors"] > 0
    assert _reads_like_fp32(open_family(folder))


def test_zero_states_never_reach_calibration(fp32_dir: Path, tmp_path: Path) -> None:
    options = StaticInt8Options(method="static_int8", op_types=["MatMul"])
    source = fp32_dir / PART_FILES["decoder_with_past"]
    zeros = [{"input_ids": np.array([[3]], dtype=np.int64),
              **{f"past_key_values.0.{kind}": np.zeros((1, 1, 2, 32), dtype=np.float32)
                 for kind in ("decoder.key", "decoder.value", "encoder.key", "encoder.value")}}]  # fmt: skip
    with pytest.raises(ZeroStateError, match="past_key_values.0.decoder.key"):
        build_part(options, "decoder_with_past", source, tmp_path / "out.onnx", work_dir=tmp_path, cache_dir=tmp_path, feeds=zeros)
    blank = part_feeds(open_family(fp32_dir), "decoder_with_past", [image(0.0)], CONFIG)  # an all-zero encoder state
    with pytest.raises(ZeroStateError, match="all zeros"):
        build_part(options, "decoder_with_past", source, tmp_path / "out.onnx", work_dir=tmp_path, cache_dir=tmp_path, feeds=blank)
    with pytest.raises(BuildError, match="needs calibration feeds"):
        build_part(options, "decoder_with_past", source, tmp_path / "out.onnx", work_dir=tmp_path, cache_dir=tmp_path)
    assert not (tmp_path / "out.onnx").exists()


def test_captured_feeds_are_re_iterable_and_refuse_a_one_shot_source(fp32_dir: Path) -> None:
    feeds = CapturedFeeds(open_family(fp32_dir), [image(6.0)], CONFIG, "decoder_with_past")
    assert len(list(feeds)) == len(list(feeds)) == len(expected_tokens(6.0))
    with pytest.raises(TypeError, match="re-iterable"):
        CapturedFeeds(open_family(fp32_dir), iter([image(6.0)]), CONFIG, "decoder")
    with pytest.raises(ValueError, match="part must be"):
        part_feeds(open_family(fp32_dir), "vision", [], CONFIG)


def test_fp16_of_decoder_parts_keeps_what_the_preflight_flags_on_captured_states(tmp_path: Path) -> None:
    # Keys up to 4.5e4 fit FP16, their attention scores (~1e9) do not: plain FP16 ends every line in NaN.
    fp32_dir = write_family(tmp_path / "fp32", attention_weight=1e-12, embedding_scale=3e4)
    assert _reads_like_fp32(open_family(fp32_dir))
    plain, _ = _variant(fp32_dir, tmp_path / "plain", dict.fromkeys(PART_FILES, Fp16Options(method="fp16")))
    assert not _reads_like_fp32(open_family(plain))
    guarded, details = _variant(
        fp32_dir, tmp_path / "guarded", dict.fromkeys(PART_FILES, Fp16Options(method="fp16", repair="scan")), feeds_for=set(PART_FILES)
    )
    assert "attention" in details["decoder_with_past"]["keep_fp32"] and details["decoder_with_past"]["preflight"]["samples"] > len(VALUES)
    assert details["encoder"]["keep_fp32"] == []
    assert _reads_like_fp32(open_family(guarded))
    with pytest.raises(BuildError, match="needs the part's feeds"):
        build_part(
            Fp16Options(method="fp16", repair="scan"),
            "decoder",
            fp32_dir / PART_FILES["decoder"],
            tmp_path / "x.onnx",
            work_dir=tmp_path,
            cache_dir=tmp_path,
        )
