"""Which CPU this is, in the words that decide reduced-precision accuracy and speed.

INT8 on x86 has three kernel families, and an INT8 model's numbers depend on which one runs it:

- ``amx`` / ``avx512-vnni`` / ``avx-vnni``: VNNI's ``vpdpbusd`` (or AMX tiles) accumulate u8 x s8 products in
  32 bits: exact.
- ``avx512`` / ``avx2`` without VNNI: ``vpmaddubsw`` adds two u8 x s8 products into a *saturating* 16-bit
  sum, so 8-bit weights against large activations clip (ONNX Runtime's and NNCF's documentation both
  name it; 7-bit weights cannot overflow: 2 x 255 x 64 < 32768).
- anything older: no fast INT8 at all.

BF16 runs natively only with ``avx512_bf16`` or AMX. Read from ``/proc/cpuinfo`` (no runtime needed),
so the exporter, the service and the test suite's header name the same class.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

#: (class, the flags that make it), best first
CLASSES = (
    ("amx", {"amx_int8", "amx_tile"}),
    ("avx512-vnni", {"avx512_vnni"}),
    ("avx-vnni", {"avx2", "avx_vnni"}),
    ("avx512", {"avx512f", "avx512bw"}),
    ("avx2", {"avx2", "fma"}),
)
#: classes whose INT8 dot products accumulate exactly (no 16-bit saturation)
VNNI_CLASSES = frozenset({"amx", "avx512-vnni", "avx-vnni"})


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def cpu_class(self) -> str:
        """``amx`` | ``avx512-vnni`` | ``avx-vnni`` | ``avx512`` | ``avx2`` | ``baseline`` (x86) or the machine."""
        if not self.flags:
            return platform.machine() or "unknown"
        return next((name for name, need in CLASSES if need <= self.flags), "baseline")

    @property
    def int8_exact(self) -> bool:
        """Whether INT8 u8 x s8 dot products accumulate without 16-bit saturation here."""
        return self.cpu_class in VNNI_CLASSES

    @property
    def bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    def describe(self) -> str:
        """E.g. ``AMD EPYC 7551 32-Core Processor (avx2: no VNNI, no BF16)``."""
        extras = ["VNNI" if self.int8_exact else "no VNNI", "BF16" if self.bf16 else "no BF16"]
        return f"{self.model} ({self.cpu_class}: {', '.join(extras)})"


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's model name and flags from ``/proc/cpuinfo`` text."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model or platform.processor() or platform.machine() or "unknown CPU", flags)


@functools.cache
def this_cpu() -> CpuInfo:
    try:
        return parse_cpuinfo(CPUINFO.read_text())
    except OSError:
        return CpuInfo(platform.processor() or platform.machine() or "unknown CPU", frozenset())
