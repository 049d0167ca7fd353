"""Where promoted variants go: a versioned release folder (default) or an MLflow model registry.

Both answer the same four questions, so the runner does not care which one a recipe names:
is the version the user asked for possible, can we write there (asked before building), what did
the last release look like (for regression gates), and promote these variants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from quant.recipe.schema import Promotion, resolve
from quant.release.bundle import Published, Release
from quant.release.folder import ReleaseFolder
from quant.release.mlflow import MlflowRegistry  # imports mlflow itself only when a recipe asks for it
from quant.release.previous import PreviousRelease


class Destination(Protocol):
    def check_version(self, version: str | None) -> None: ...

    def check_writable(self) -> None: ...

    def previous(self) -> PreviousRelease | None: ...

    def publish(self, release: Release) -> Published: ...


def destination_for(promotion: Promotion, base_dir: Path, recipe: str, variants: tuple[str, ...], version: str | None) -> Destination:
    """The recipe's promotion target; the requested version is checked now, not after every variant is built."""
    target: Destination
    if promotion.to_mlflow:
        target = MlflowRegistry.from_recipe(promotion, base_dir, recipe, variants)
    else:
        target = ReleaseFolder(resolve(base_dir, promotion.to).resolve(), recipe, version)
    target.check_version(version)
    return target
