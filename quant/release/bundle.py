"""What a run promotes, whichever destination takes it, and what came of it; the promoted model file."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from quant.model import external_data_files


@dataclass(frozen=True)
class FamilyFile:
    """One file of a promoted model family: an ONNX part (written with `metadata`) or an asset copied unchanged."""

    source: Path
    metadata: dict[str, str] | None  # None: not a model (vocab.json, generation_config.json): copied byte for byte


@dataclass(frozen=True)
class Release:
    """What a run promotes, whichever destination takes it."""

    models: dict[str, Path]  # variant -> built model file
    manifest: dict[str, Any]
    metadata: dict[str, dict[str, str]]  # variant -> quant.* traceability written into the model
    metrics: dict[str, dict[str, dict[str, float]]]  # variant -> output -> metric -> value
    ranked: list[str]  # variants, best first by promotion.rank_by
    all_gates_passed: bool  # every gate of every variant in the run, not only the promoted ones
    families: dict[str, dict[str, FamilyFile]] = field(default_factory=dict)  # variant -> file name -> file, released as <variant>/<name>


@dataclass(frozen=True)
class Published:
    """Where a promotion went (for people) and what was written (for results.json)."""

    where: str
    record: dict[str, Any]


def copy_with_metadata(source: Path, target: Path, metadata: dict[str, str]) -> list[Path]:
    """Write the model with traceability metadata; external data files are copied beside it unchanged."""
    model = onnx.load(str(source), load_external_data=False)
    kept = {p.key: p.value for p in model.metadata_props if not p.key.startswith("quant.")}
    del model.metadata_props[:]
    for key, value in {**kept, **metadata}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))
    written = [target]
    for location in external_data_files(model):
        shutil.copyfile(source.parent / location, target.parent / location)
        written.append(target.parent / location)
    return written
