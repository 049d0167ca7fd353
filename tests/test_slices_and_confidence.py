"""Per-sample parts of the ratio metrics: intervals, per-slice results, and agreement split by
how sure FP32 was of each line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quant.compare import OutputComparison
from quant.data.sources import open_source
from quant.errors import DataError
from quant.metrics.ctc import confidence_margins
from quant.recipe.schema import DataSet, ImageInput, OutputSpec
from tests.conftest import write_images

CHARSET = ["<blank>", *"abcde", " "]


def line(frames: list[int], sure: float = 0.95, classes: int = 7) -> np.ndarray:
    """CTC probabilities whose greedy path is `frames`, each frame's best class at probability `sure`."""
    probabilities = np.full((1, len(frames), classes), (1 - sure) / (classes - 1), np.float32)
    for t, c in enumerate(frames):
        probabilities[0, t, c] = sure
    return probabilities


def test_slices_tsv_marks_each_sample(tmp_path: Path) -> None:
    write_images(tmp_path, 3, seed=0)
    (tmp_path / "slices.tsv").write_text("file\tslice\nimg_000.png\tclean\nimg_001.png\tblur\nimg_002.png\tclean\n")
    dataset = DataSet.model_validate({"source": {"images": str(tmp_path), "slices": "slices.tsv"}})
    source = open_source(dataset, Path("."), {"x": ImageInput.model_validate({"resize": {"height": 8, "width": 8}})}, ["x"], "evaluation")
    assert [s.slice for s in source.samples] == ["clean", "blur", "clean"]


def test_an_image_without_a_slice_is_a_data_error_naming_the_field(tmp_path: Path) -> None:
    write_images(tmp_path, 2, seed=0)
    (tmp_path / "slices.tsv").write_text("img_000.png\tclean\n")
    dataset = DataSet.model_validate({"source": {"images": str(tmp_path), "slices": "slices.tsv"}})
    with pytest.raises(DataError) as caught:
        open_source(dataset, Path("."), {"x": ImageInput.model_validate({"resize": {"height": 8, "width": 8}})}, ["x"], "tuning")
    assert caught.value.field == "tuning.source.slices" and "img_001.png" in str(caught.value)


def test_margin_is_the_closest_call_on_the_line() -> None:
    sure = line([1, 0, 2])
    unsure = sure.copy()
    unsure[0, 1] = [0.45, 0.4, 0.15, 0, 0, 0, 0]  # frame 1: blank 0.45 vs 'a' 0.40
    assert confidence_margins(sure) == [pytest.approx(0.95 - 0.05 / 6)]
    assert confidence_margins(unsure) == [pytest.approx(0.05)]


def test_metrics_per_slice_and_by_fp32_confidence() -> None:
    comparison = OutputComparison(OutputSpec(kind="ctc", charset_metadata="character", confident_margin=0.5), charset=CHARSET)
    # clean lines: FP32 sure, variant agrees; blurred lines: FP32 unsure (margin 0.1), variant reads otherwise.
    for index in range(30):
        comparison.add(f"c{index}", line([1, 0, 2]), line([1, 0, 2]), label="ab", slice="clean")
    for index in range(10):
        comparison.add(f"b{index}", line([1, 0, 3], sure=0.55), line([1, 0, 4]), label="ab", slice="blur")
    overall = comparison.estimates()
    assert overall["ctc_exact_match"].value == pytest.approx(30 / 40)
    assert overall["ctc_exact_match_confident"].value == 1.0 and overall["ctc_exact_match_confident"].interval.samples == 30
    assert overall["ctc_exact_match_unsure"].value == 0.0 and overall["ctc_exact_match_unsure"].interval.samples == 10
    # label CER: FP32 is wrong once on each blurred line (c for b), the variant too (d for b): delta 0.
    assert overall["label_cer_delta"].value == 0.0
    low, high = overall["ctc_exact_match"].interval.low, overall["ctc_exact_match"].interval.high
    assert low < 0.75 < high and overall["ctc_exact_match"].interval.method == "wilson"
    per_slice = comparison.slice_estimates()
    assert list(per_slice) == ["blur", "clean"]
    assert per_slice["clean"]["ctc_exact_match"].value == 1.0 and per_slice["clean"]["ctc_exact_match"].interval.samples == 30
    assert per_slice["blur"]["ctc_cer"].value == pytest.approx(1 / 2)
    assert comparison.summary()["ctc_exact_match"] == overall["ctc_exact_match"].value


def test_label_cer_delta_interval_resamples_lines() -> None:
    comparison = OutputComparison(OutputSpec(kind="ctc", charset_metadata="character"), charset=CHARSET)
    for index in range(40):
        broken = index % 4 == 0  # every fourth line the variant loses a character FP32 read right
        comparison.add(f"l{index}", line([1, 0, 2, 0, 3]), line([1, 0, 2] if broken else [1, 0, 2, 0, 3]), label="abc")
    delta = comparison.estimates()["label_cer_delta"]
    assert delta.value == pytest.approx(10 / 120)
    assert 0 < delta.interval.low < delta.value < delta.interval.high
    assert delta.interval.method == "bootstrap" and delta.interval.samples == 40
