"""File-system helpers the run and the release share: copying a model with its external data."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from quant.model import external_data_files


def copy_model(source: Path, target: Path) -> list[Path]:
    """Copy an .onnx file and every external-data file it names (a >2 GB model keeps its weights there).

    The data files keep their names, relative to the model's folder, as the model refers to them; returns every file written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    written = [target]
    for location in external_data_files(onnx.load(str(source), load_external_data=False)):
        (target.parent / location).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.parent / location, target.parent / location)
        written.append(target.parent / location)
    return written
