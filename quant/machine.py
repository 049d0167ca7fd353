"""Machine facts a quantization choice depends on, read from the machine (not assumed).

8-bit weights with u8 activations and s8 weights are safe only where onnxruntime's u8 x s8 kernels add
products in 32 bits: x86 CPUs with VNNI (avx512_vnni or avx_vnni). Without VNNI they add each pair of
products into a saturating int16 (vpmaddubsw), which 8-bit weights can overflow (2 x 255 x 127 > 32767);
7-bit weights cannot (quant/presets/avx2.yaml, notes/reduce-range-cause.md).

The machine that matters is the one the release targets: the one measuring latency. Locally that is this
machine; with --executor ray it is a node with the recipe's bench.resources, whose flags the executor reads
there (`Executor.target_cpu`; `source` names the node). QUANT_TEST_CPUINFO (tests only) reads another file
in place of /proc/cpuinfo, so a test can give one node of a cluster on one machine other flags.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


@dataclass(frozen=True)
class CpuFacts:
    machine: str  # platform.machine()
    flags: frozenset[str]  # the first processor's flags in /proc/cpuinfo (empty when unreadable)
    source: str  # where the flags came from

    @property
    def x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i686", "x86")

    @property
    def vnni(self) -> list[str]:
        return [f for f in VNNI_FLAGS if f in self.flags]

    def to_dict(self) -> dict[str, object]:
        return {"machine": self.machine, "vnni_flags": self.vnni, "avx2": "avx2" in self.flags, "source": self.source}


@lru_cache(maxsize=1)
def cpu_facts(cpuinfo: Path | None = None) -> CpuFacts:
    cpuinfo = cpuinfo or Path(os.environ.get("QUANT_TEST_CPUINFO") or CPUINFO)
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return CpuFacts(platform.machine(), frozenset(), f"{cpuinfo} unreadable")
    line = next((line for line in text.splitlines() if line.split(":")[0].strip() in ("flags", "Features")), "")
    return CpuFacts(platform.machine(), frozenset(line.partition(":")[2].split()), f"{cpuinfo} flags")


def eight_bit_weights_unsafe(activation_type: str, weight_type: str, facts: CpuFacts | None = None) -> str | None:
    """Why 8-bit weights could saturate on this machine, or None when they cannot.

    Only u8 activations x s8 weights on x86 go through the pairwise int16 path; an x86 CPU whose flags
    could not be read is treated as unsafe (a wrong 'safe' corrupts results silently)."""
    facts = facts or cpu_facts()
    if not facts.x86 or (activation_type, weight_type) != ("uint8", "int8"):
        return None
    if facts.vnni:
        return None
    if not facts.flags:
        return f"u8 x s8 with 8-bit weights may saturate: no CPU flags readable ({facts.source})"
    return f"u8 x s8 with 8-bit weights saturates in int16 on x86 without VNNI ({facts.source}: none of {', '.join(VNNI_FLAGS)})"
