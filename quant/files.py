"""File-system helpers the run, the caches and the release share: copying a model with its external data,
sweeping the scratch left by killed runs, checking a folder can be created, flushing a folder to disk."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import onnx

from quant.errors import OutputError
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


def alive(pid: int) -> bool:
    """Whether a process of this id runs on this host (one we may not signal still runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned(candidates: Iterable[Path], pid_in_name: Callable[[str], str]) -> list[str]:
    """Delete the scratch folders among `candidates` whose writer (the pid in their name) is gone; returns their names.

    Every writer names its scratch with its own pid, so a live run's scratch is never touched."""
    removed = []
    for path in candidates:
        pid = pid_in_name(path.name)
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def check_can_create(path: Path, field: str) -> None:
    """`path` may not exist yet: its nearest existing ancestor must be a writable folder. Creates nothing."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError("is a file, not a folder: the release folder cannot be created", file=str(existing), field=field)
    if not os.access(existing, os.W_OK | os.X_OK):  # also False on a read-only file system, even for root
        raise OutputError("the folder is not writable", file=str(existing), field=field)


def fsync_tree(folder: Path) -> None:
    """Every file in `folder` and its sub-folders (a family's variant folders), and the folders themselves, on disk
    (before it is renamed into place)."""
    for path in folder.iterdir():
        if path.is_dir():
            fsync_tree(path)
            continue
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
