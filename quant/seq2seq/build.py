"""Building one variant of a family: each part with its method (quant.seq2seq.parts.build_part), in a child process
(quant.executor), into one folder in the family's own layout; parts without a method are the FP32 files, copied
unchanged. A part that calibrates (static INT8, the FP16 pre-flight) reads its real inputs: the calibration images
for the encoder, the steps of FP32 generation on them for a decoder part (captured K/V, never zeros)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quant.data.feeds import checked_feeds
from quant.data.sources import SampleSource
from quant.executor import run_isolated
from quant.files import copy_model
from quant.methods.base import BuildResult
from quant.model import Dims, file_sha256, model_size
from quant.precision import nothing_quantized
from quant.recipe.family import ROLES, FamilyVariant, PartMethod
from quant.seq2seq.family import FamilyInfo, open_sessions
from quant.seq2seq.generate import GenerationConfig
from quant.seq2seq.parts import build_part, part_feeds

FP32 = "fp32"  # what a part without a method is recorded as


@dataclass
class BuiltPart:
    """One part of a built variant: its file, the method it got and how the build went."""

    role: str
    path: Path
    method: str
    options: dict[str, Any] | None
    build: dict[str, Any] = field(default_factory=dict)
    unchanged: str | None = None  # the method quantized nothing in this part: why (quant.precision.nothing_quantized)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "method": self.method,
            "options": self.options,
            "sha256": file_sha256(self.path),
            "size_bytes": model_size(self.path),
            "build": self.build,
            "nothing_quantized": self.unchanged,
        }


@dataclass(frozen=True)
class FamilyBuild:
    """Where a variant's parts are built and what they may read."""

    family: FamilyInfo
    folder: Path  # the variant's parts, in the family's layout
    work_dir: Path
    cache_dir: Path
    calibration: SampleSource | None
    log: Callable[[str], None]  # a top-level function: it is pickled into each build's child process


def method_summary(parts: dict[str, BuiltPart]) -> str:
    """The variant's methods in one line: `fp16` when every part has it, else each method with its parts
    (`weight_only decoder+decoder_with_past, fp32 encoder`)."""
    by_method: dict[str, list[str]] = {}
    for role, part in parts.items():
        by_method.setdefault(part.method, []).append(role)
    if len(by_method) == 1:
        return next(iter(by_method))
    return ", ".join(f"{method} {'+'.join(roles)}" for method, roles in sorted(by_method.items(), key=lambda item: item[0] == FP32))


def needs_feeds(options: PartMethod) -> bool:
    """Whether building this part reads its real inputs (calibration ranges, the FP16 pre-flight scan)."""
    return options.method == "static_int8" or getattr(options, "repair", "off") != "off"


@dataclass(frozen=True)
class PartJob:
    """Everything one part's build reads, picklable: it runs in a fresh child process."""

    options: PartMethod
    role: str
    source: Path
    out_path: Path
    work_dir: Path
    cache_dir: Path
    fp32_parts: dict[str, Path]  # the FP32 family, to capture a decoder part's inputs from its generation
    calibration: SampleSource | None
    encoder_inputs: dict[str, Dims]
    generation: GenerationConfig
    log: Callable[[str], None]


def _build_part(job: PartJob) -> BuildResult:
    feeds = None
    if job.calibration is not None and needs_feeds(job.options):
        images = job.calibration.subset(getattr(job.options, "calibration_samples", None))
        encoder_feeds = [feeds for _, feeds in checked_feeds(images, job.encoder_inputs)]
        feeds = part_feeds(open_sessions(job.fp32_parts, threads=1), job.role, encoder_feeds, job.generation)
    return build_part(job.options, job.role, job.source, job.out_path, work_dir=job.work_dir, cache_dir=job.cache_dir, feeds=feeds, log=job.log)


def _build_parts(jobs: list[PartJob]) -> list[BuildResult]:
    """Every quantized part of one variant, in one child process (one interpreter start per variant, not per part)."""
    results = []
    for job in jobs:
        started = time.perf_counter()
        result = _build_part(job)
        result.details["build_seconds"] = round(time.perf_counter() - started, 3)
        results.append(result)
    return results


def build_family_variant(variant: FamilyVariant, setup: FamilyBuild) -> dict[str, BuiltPart]:
    """Build every part that gets a method, copy the others; raises BuildError when a part's build fails."""
    shutil.rmtree(setup.folder, ignore_errors=True)  # an earlier run's files must not mix with these
    setup.folder.mkdir(parents=True)
    chosen = variant.resolved()
    built: dict[str, BuiltPart] = {}
    jobs: list[PartJob] = []
    for role in ROLES:
        source = setup.family.parts[role]
        target = setup.folder / source.path.name
        options = chosen.get(role)
        if options is None:
            copy_model(source.path, target)
            built[role] = BuiltPart(role, target, FP32, None)
            continue
        work_dir = setup.work_dir / role
        work_dir.mkdir(parents=True, exist_ok=True)
        jobs.append(PartJob(
            options, role, source.path, target, work_dir, setup.cache_dir,
            {r: info.path for r, info in setup.family.parts.items()}, setup.calibration, setup.family.encoder_inputs,
            setup.family.generation, setup.log,
        ))  # fmt: skip
    results, stats = run_isolated(_build_parts, jobs) if jobs else ([], {})
    for job, result in zip(jobs, results, strict=True):
        result.details["variant_build_peak_rss_mb"] = stats["peak_rss_mb"]  # the child built every part of the variant
        unchanged = nothing_quantized(job.options.method, job.source, result.path, getattr(job.options, "op_types", None))
        options = job.options.model_dump(mode="json", exclude={"gates"})
        built[job.role] = BuiltPart(job.role, result.path, job.options.method, options, result.details, unchanged)
    return {role: built[role] for role in ROLES}
