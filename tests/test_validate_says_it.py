"""Mistakes said at --validate, not at the end of a run; a summary that stays true for third-party models."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnxconverter_common import float16

from quant.outcome import VariantOutcome
from quant.precision import one_value_per_sample, source_precision
from quant.report.summary import summary_markdown
from tests.conftest import base_recipe, run_cli, tiny_ctc_model, write_recipe


def _validate(workspace: dict[str, Path], **overrides: object) -> tuple[int, str]:
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"], **overrides)
    done = run_cli("--recipe", str(write_recipe(workspace["root"], recipe)), "--validate", cwd=workspace["root"])
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    ("output", "gate", "said"),
    [
        ({"kind": "ctc"}, {"metric": "label_cer", "max": 0.1}, "a character list (charset_metadata or charset_file)"),
        ({"kind": "ctc", "charset_metadata": "character"}, {"metric": "label_cer", "max": 0.1}, "ground-truth labels"),
        ({"kind": "ctc", "charset_metadata": "character"}, {"metric": "ctc_exact_match_norm", "min": 0.9}, "normalize or ignore_chars"),
    ],
)
def test_gate_whose_metric_cannot_be_measured_is_refused(workspace: dict[str, Path], output: dict, gate: dict, said: str) -> None:
    code, err = _validate(workspace, outputs={"probs": output}, gates=[gate])
    assert code == 2 and "gates[0].metric" in err and said in err and "on output 'probs'" in err


def test_gate_whose_metric_can_be_measured_passes_validation(workspace: dict[str, Path]) -> None:
    output = {"kind": "ctc", "charset_metadata": "character", "ignore_chars": [" "]}
    code, err = _validate(workspace, outputs={"probs": output}, gates=[{"metric": "ctc_exact_match_norm", "min": 0.9}])
    assert code == 0, err


def test_gate_on_a_missing_output_lists_the_outputs(workspace: dict[str, Path]) -> None:
    code, err = _validate(workspace, gates=[{"metric": "cosine", "min": 0.9, "output": "logits"}])
    assert code == 2 and "gates[0].output" in err and "its outputs are ['probs']" in err


def test_metric_typo_gets_a_suggestion(workspace: dict[str, Path]) -> None:
    code, err = _validate(workspace, gates=[{"metric": "ctc_exact_mach", "min": 0.9}])
    assert code == 2 and "did you mean 'ctc_exact_match'?" in err


def test_fp16_variant_of_an_fp16_model_is_refused_and_the_summary_says_fp16(workspace: dict[str, Path]) -> None:
    onnx.save(float16.convert_float_to_float16(tiny_ctc_model(), keep_io_types=True), str(workspace["model"]))
    code, err = _validate(workspace)
    assert code == 2 and "already FP16" in err and "variants.fp16.method" in err
    assert source_precision(workspace["model"]) == "FP16"
    summary = summary_markdown("r", [], 1_000_000, None, "FAIL", source=source_precision(workspace["model"]))
    assert "FP16 model: 1.00 MB" in summary and "FP32 model" not in summary


def test_a_multi_line_error_stays_in_its_table_row() -> None:
    broken = VariantOutcome(
        name="fp16", method="fp16", options={}, status="error", error="[ONNXRuntimeError] : 1 : FAIL\n Type Error: | tensor(float16)\n"
    )
    table = [line for line in summary_markdown("r", [broken], 1, None, "FAIL").splitlines() if line.startswith("|")]
    assert len(table) == 3 and table[2].count("|") == 8 and "Type Error: / tensor(float16)" in table[2]


def test_a_classifier_headline_leads_with_top1_and_drops_cosine_of_one_value() -> None:
    outcome = VariantOutcome(name="int8", method="dynamic_int8", options={}, status="passed")
    outcome.metrics = {"class": {"top1_agreement": 0.99, "cosine": 0.999, "snr_db": 30.0}, "score": {"cosine": -1.0, "snr_db": 25.0}}
    row = next(
        line
        for line in summary_markdown("r", [outcome], 1, None, "PASS", one_value_outputs=frozenset({"score"})).splitlines()
        if line.startswith("| int8")
    )
    assert "top1_agreement 0.99, cosine 0.999, snr_db 25" in row  # the score's sign-only cosine (-1) is not the headline
    assert one_value_per_sample(["N", 1]) and one_value_per_sample([]) and not one_value_per_sample([1, "W", 6])
