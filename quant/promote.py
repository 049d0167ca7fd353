"""The release folder: promoted models, manifest.json and SHA256SUMS, written whole or not at all."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from quant.errors import OutputError
from quant.model import external_data_files, file_sha256
from quant.testpoint import pause_point

VERSION_PATTERN = re.compile(r"^v(\d+)$")
STAGING_PREFIX = ".staging-"


@dataclass(frozen=True)
class Release:
    """What a run promotes, whichever destination takes it."""

    models: dict[str, Path]  # variant -> built model file
    manifest: dict[str, Any]
    metadata: dict[str, dict[str, str]]  # variant -> quant.* traceability written into the model
    metrics: dict[str, dict[str, dict[str, float]]]  # variant -> output -> metric -> value
    ranked: list[str]  # variants, best first by promotion.rank_by
    all_gates_passed: bool  # every gate of every variant in the run, not only the promoted ones


@dataclass(frozen=True)
class Published:
    """Where a promotion went (for people) and what was written (for results.json)."""

    where: str
    record: dict[str, Any]


@dataclass(frozen=True)
class PromotedFile:
    variant: str
    file: str
    sha256: str


def existing_versions(release_dir: Path) -> list[str]:
    """Complete versions only: staging folders of crashed runs are never a version."""
    if not release_dir.is_dir():
        return []
    found = [p.name for p in release_dir.iterdir() if p.is_dir() and VERSION_PATTERN.match(p.name)]
    return sorted(found, key=lambda v: int(v[1:]))


def next_version(release_dir: Path) -> str:
    versions = existing_versions(release_dir)
    return f"v{int(versions[-1][1:]) + 1}" if versions else "v1"


def remove_stale_staging(release_dir: Path) -> list[str]:
    """Staging folders left by a killed run (its process is gone) are deleted; returns their names."""
    removed = []
    if not release_dir.is_dir():
        return removed
    for staging in release_dir.glob(f"{STAGING_PREFIX}*"):
        pid = staging.name.rsplit("-", 1)[-1]
        if pid.isdigit() and alive(int(pid)):
            continue
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging.name)
    return removed


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def check_can_create(path: Path, field: str) -> None:
    """`path` may not exist yet: its nearest existing ancestor must be a writable folder. Creates nothing."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError("is a file, not a folder: the release folder cannot be created", file=str(existing), field=field)
    if not os.access(existing, os.W_OK | os.X_OK):  # also False on a read-only file system, even for root
        raise OutputError("the folder is not writable", file=str(existing), field=field)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def promote(
    release_root: Path,
    recipe_name: str,
    models: dict[str, Path],
    manifest: dict[str, Any],
    metadata: dict[str, dict[str, str]],
    version: str | None = None,
) -> Path:
    """Stage everything in a hidden folder beside the target, then rename it into place in one step."""
    release_dir = release_root / recipe_name
    try:
        release_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the release folder: {error.strerror}", file=str(release_dir), field="promotion.to") from None
    if not os.access(release_dir, os.W_OK):
        raise OutputError("the release folder is not writable", file=str(release_dir), field="promotion.to")
    remove_stale_staging(release_dir)
    version = version or next_version(release_dir)
    if not VERSION_PATTERN.match(version):
        raise OutputError(f"version '{version}' must look like v1, v2, ...", field="--release-version")
    target = release_dir / version
    if target.exists():
        raise OutputError(f"release {version} already exists and is never overwritten", file=str(target), field="--release-version")
    staging = release_dir / f"{STAGING_PREFIX}{version}-{os.getpid()}"
    try:
        staging.mkdir()
        promoted: list[PromotedFile] = []
        for variant, path in models.items():
            for written in copy_with_metadata(path, staging / f"{variant}.onnx", metadata[variant]):
                promoted.append(PromotedFile(variant, written.name, file_sha256(written)))
        manifest = {**manifest, "version": version, "files": [f.__dict__ for f in promoted]}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        sums = [f"{f.sha256}  {f.file}" for f in promoted] + [f"{file_sha256(staging / 'manifest.json')}  manifest.json"]
        (staging / "SHA256SUMS").write_text("\n".join(sums) + "\n", encoding="utf-8")
        _fsync_tree(staging)
        pause_point("promotion")  # staged in full, not yet in place
        os.rename(staging, target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write the release: {error.strerror or error}", file=str(release_dir), field="promotion.to") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
