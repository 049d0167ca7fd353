"""Where a result came from: tool and library versions, CPU, Python."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import quant

LIBRARIES = ("onnx", "onnxruntime", "onnxconverter-common", "numpy", "pydantic", "pillow", "onnx-neural-compressor", "neural-compressor", "datasets")
INTERESTING_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "sse4_2", "neon", "asimddp")


def library_versions() -> dict[str, str]:
    versions = {"quant": quant.__version__}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def cpu_info() -> dict[str, object]:
    model, flags = "", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    return {
        "model": model or platform.processor(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "flags": sorted(f for f in INTERESTING_FLAGS if f in flags),
    }


def environment() -> dict[str, object]:
    return {"python": platform.python_version(), "platform": platform.platform(), "libraries": library_versions(), "cpu": cpu_info()}
