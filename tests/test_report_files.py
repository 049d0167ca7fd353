"""A report file that cannot be written is named in the error: a write() that fails on a full disk
raises an OSError without a file name, so the CLI could only have named the run folder."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from quant.report.files import write_json, write_junit, write_run_reports
from quant.results import RunResults
from tests.test_results import RESULTS

DISK_FULL = Path("/dev/full")  # every write() to it fails with ENOSPC, as on a full disk
DOCUMENT = {**RESULTS, "variants": {"fp16": {**RESULTS["variants"]["fp16"], "method": "fp16"}}}  # report.html shows the method


@pytest.mark.parametrize("name", ["results.json", "summary.md", "report.html"])
def test_a_full_disk_in_the_run_folder_names_the_report_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).symlink_to(DISK_FULL)
    with pytest.raises(OSError) as raised:
        write_run_reports(tmp_path, RunResults.model_validate(DOCUMENT), "summary")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / name)


@pytest.mark.parametrize("write", [write_json, write_junit])
def test_a_full_disk_names_the_report_file_given(write: Callable[[Path, list[RunResults]], None]) -> None:
    with pytest.raises(OSError) as raised:
        write(DISK_FULL, [RunResults.model_validate(DOCUMENT)])
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(DISK_FULL)
