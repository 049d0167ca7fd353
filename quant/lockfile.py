"""Lock files: a search's result written back as a plain recipe that rebuilds it without searching."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from quant.recipe.loader import LoadedRecipe, rebase_paths
from quant.recipe.schema import StaticInt8Options


def lock_path(loaded: LoadedRecipe, out_dir: Path) -> Path:
    return out_dir / f"{loaded.path.stem}.lock.yaml"


def remove_stale_lock(loaded: LoadedRecipe, out_dir: Path) -> None:
    """A lock describes one run: an older run's lock must not mix with this one's."""
    lock_path(loaded, out_dir).unlink(missing_ok=True)


SEARCHED_SETTINGS = ("calibrate", "percentile", "reduce_range", "per_channel", "tensor_overrides")


def write_lock(loaded: LoadedRecipe, out_dir: Path, variant: str, asked: StaticInt8Options, chosen: StaticInt8Options) -> Path:
    """Add what `variant`'s search chose to the run's lock file: its exclusion list and every setting it changed
    from the recipe's (calibration, 7/8-bit weights, per-channel, tensor overrides); fallback removed, paths rebased."""
    settings: dict[str, Any] = {"exclude_nodes": list(dict.fromkeys(chosen.exclude_nodes))}
    for key in SEARCHED_SETTINGS:
        if getattr(chosen, key) != getattr(asked, key):
            settings[key] = chosen.model_dump(mode="json", exclude_none=True)[key]
    return write_lock_options(loaded, out_dir, variant, settings, remove=("fallback",))


def write_lock_options(loaded: LoadedRecipe, out_dir: Path, variant: str, settings: dict[str, Any], remove: tuple[str, ...] = ()) -> Path:
    """Set `settings` (and drop the `remove` keys) in `variant`'s options in the run's lock file (paths rebased)."""
    path = lock_path(loaded, out_dir)
    if path.is_file():
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    else:
        document = rebase_paths(loaded.resolved, loaded.base_dir, out_dir)
    options = dict(document["variants"][variant])
    for key in remove:
        options.pop(key, None)
    options.update(settings)
    document["variants"][variant] = options
    header = (
        f"# Lock file written by quant from {loaded.path.name}: what the searches found (INT8 node exclusions, FP16 nodes kept in FP32).\n"
        f"# `quantize --recipe {path.name}` rebuilds them without searching.\n"
    )
    return _write(path, header, document)


def write_family_lock(
    loaded: LoadedRecipe, out_dir: Path, parts: dict[str, dict[str, str]], generation: dict[str, int], variant_parts: dict[str, dict[str, Any]]
) -> Path:
    """The run's family recipe with every choice pinned: each FP32 part's file and sha256 (`parts`, by role), the generation
    settings as resolved, and per variant every part's method with all its options written out (groups such as `decoders`
    resolved; parts without one stay FP32)."""
    path = lock_path(loaded, out_dir)
    document = rebase_paths(loaded.resolved, loaded.base_dir, out_dir)
    family = document["family"]
    document["family"] = {**family, "parts": parts, "generation": {**family.get("generation", {}), **generation}}
    for variant, chosen in variant_parts.items():
        document["variants"][variant] = {**document["variants"][variant], "parts": chosen}
    header = (
        f"# Lock file written by quant from {loaded.path.name}: every part's FP32 file pinned by sha256 and every part's method with all\n"
        f"# its options. `quantize --recipe {path.name}` builds the same variants from the same files (or refuses changed files).\n"
    )
    return _write(path, header, document)


def _write(path: Path, header: str, document: dict[str, Any]) -> Path:
    staging = path.with_name(path.name + f".tmp{os.getpid()}")
    staging.write_text(header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(staging, path)
    return path
