"""Where promoted variants go: a versioned release folder (default) or an MLflow model registry.

Both answer the same four questions, so the runner does not care which one a recipe names:
is the version the user asked for possible, can we write there (asked before building), what did
the last release look like (for regression gates), and promote these variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from quant.errors import OutputError
from quant.promote import VERSION_PATTERN, Published, Release, check_can_create, promote
from quant.recipe.schema import Promotion, resolve
from quant.registry import MlflowRegistry  # imports mlflow itself only when a recipe asks for it
from quant.regression import PreviousRelease, last_release


class Destination(Protocol):
    def check_version(self, version: str | None) -> None: ...

    def check_writable(self) -> None: ...

    def previous(self) -> PreviousRelease | None: ...

    def publish(self, release: Release) -> Published: ...


@dataclass(frozen=True)
class ReleaseFolder:
    """releases/<recipe>/vN/ with manifest.json and SHA256SUMS, renamed into place whole."""

    root: Path
    recipe: str
    version: str | None = None

    @property
    def folder(self) -> Path:
        return self.root / self.recipe

    def check_version(self, version: str | None) -> None:
        if version is None:
            return
        if not VERSION_PATTERN.match(version):
            raise OutputError(f"version '{version}' must look like v1, v2, ...", field="--release-version")
        if (self.folder / version).exists():
            raise OutputError(
                f"release {version} already exists and is never overwritten", file=str(self.folder / version), field="--release-version"
            )

    def check_writable(self) -> None:
        check_can_create(self.root, "promotion.to")

    def previous(self) -> PreviousRelease | None:
        return last_release(self.folder)

    def publish(self, release: Release) -> Published:
        """Metrics, ranking and the all-passed flag are in the manifest already; a folder has no alias to move."""
        folder = promote(self.root, self.recipe, release.models, release.manifest, release.metadata, self.version)
        return Published(str(folder), {"release": str(folder)})


def destination_for(promotion: Promotion, base_dir: Path, recipe: str, variants: tuple[str, ...], version: str | None) -> Destination:
    """The recipe's promotion target; the requested version is checked now, not after every variant is built."""
    target: Destination
    if promotion.to_mlflow:
        target = MlflowRegistry.from_recipe(promotion, base_dir, recipe, variants)
    else:
        target = ReleaseFolder(resolve(base_dir, promotion.to).resolve(), recipe, version)
    target.check_version(version)
    return target
