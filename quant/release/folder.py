"""The release folder: promoted models, manifest.json and SHA256SUMS, written whole or not at all."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant.errors import OutputError
from quant.files import check_can_create, fsync_tree, remove_abandoned
from quant.model import file_sha256
from quant.release.bundle import FamilyFile, Published, Release, copy_with_metadata
from quant.release.previous import PreviousRelease
from quant.testpoint import pause_point

VERSION_PATTERN = re.compile(r"^v(\d+)$")
STAGING_PREFIX = ".staging-"


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


def last_release(release_dir: Path) -> PreviousRelease | None:
    """The newest complete version, if its manifest can be read."""
    for version in reversed(existing_versions(release_dir)):
        try:
            return PreviousRelease(version, json.loads((release_dir / version / "manifest.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return None


def check_version(release_dir: Path, version: str) -> None:
    """A version the user names looks like vN and does not exist yet: a release is never overwritten."""
    if not VERSION_PATTERN.match(version):
        raise OutputError(f"version '{version}' must look like v1, v2, ...", field="--release-version")
    if (release_dir / version).exists():
        raise OutputError(f"release {version} already exists and is never overwritten", file=str(release_dir / version), field="--release-version")


def remove_stale_staging(release_dir: Path) -> list[str]:
    """Staging folders left by a killed run (its process is gone) are deleted; returns their names."""
    if not release_dir.is_dir():
        return []
    return remove_abandoned(release_dir.glob(f"{STAGING_PREFIX}*"), lambda name: name.rsplit("-", 1)[-1])


def promote(
    release_root: Path,
    recipe_name: str,
    models: dict[str, Path],
    manifest: dict[str, Any],
    metadata: dict[str, dict[str, str]],
    version: str | None = None,
    families: dict[str, dict[str, FamilyFile]] | None = None,
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
    check_version(release_dir, version)
    target = release_dir / version
    staging = release_dir / f"{STAGING_PREFIX}{version}-{os.getpid()}"
    try:
        staging.mkdir()
        promoted: list[PromotedFile] = []
        for variant, path in models.items():
            for written in copy_with_metadata(path, staging / f"{variant}.onnx", metadata[variant]):
                promoted.append(PromotedFile(variant, written.name, file_sha256(written)))
        for variant, files in (families or {}).items():
            promoted += _stage_family(staging, variant, files)
        manifest = {**manifest, "version": version, "files": [f.__dict__ for f in promoted]}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        sums = [f"{f.sha256}  {f.file}" for f in promoted] + [f"{file_sha256(staging / 'manifest.json')}  manifest.json"]
        (staging / "SHA256SUMS").write_text("\n".join(sums) + "\n", encoding="utf-8")
        fsync_tree(staging)
        pause_point("promotion")  # staged in full, not yet in place
        os.rename(staging, target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write the release: {error.strerror or error}", file=str(release_dir), field="promotion.to") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _stage_family(staging: Path, variant: str, files: dict[str, FamilyFile]) -> list[PromotedFile]:
    """A family variant's files in its own folder, in the family's layout (the parts load together from there)."""
    folder = staging / variant
    folder.mkdir()
    promoted = []
    for name, file in files.items():
        if file.metadata is None:
            shutil.copyfile(file.source, folder / name)
            written = [folder / name]
        else:
            written = copy_with_metadata(file.source, folder / name, file.metadata)
        promoted += [PromotedFile(variant, path.relative_to(staging).as_posix(), file_sha256(path)) for path in written]
        pause_point("family_promotion")  # some of a family's files staged, not all
    return promoted


@dataclass(frozen=True)
class ReleaseFolder:
    """The folder destination: releases/<recipe>/vN/ with manifest.json and SHA256SUMS, renamed into place whole."""

    root: Path
    recipe: str
    version: str | None = None

    @property
    def folder(self) -> Path:
        return self.root / self.recipe

    def check_version(self, version: str | None) -> None:
        if version is not None:
            check_version(self.folder, version)

    def check_writable(self) -> None:
        check_can_create(self.root, "promotion.to")

    def previous(self) -> PreviousRelease | None:
        return last_release(self.folder)

    def publish(self, release: Release) -> Published:
        """Metrics, ranking and the all-passed flag are in the manifest already; a folder has no alias to move."""
        folder = promote(self.root, self.recipe, release.models, release.manifest, release.metadata, self.version, release.families)
        return Published(str(folder), {"release": str(folder)})
