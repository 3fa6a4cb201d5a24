"""The CPU a benchmark ran on: model name and the SIMD flags that matter for its numbers.

Every benchmark prints (and records) these; one reader so they all say the same thing. Linux
``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``); elsewhere ``platform``, without flags.
"""

from __future__ import annotations

import platform
from pathlib import Path

ARM_SIMD = ("asimd", "asimdhp", "asimddp", "sve", "sve2", "i8mm", "bf16")


def _cpuinfo() -> list[tuple[str, str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines())]


def cpu_model() -> str:
    """The first ``model name`` of /proc/cpuinfo, else what ``platform`` knows."""
    return next((v for k, v in _cpuinfo() if k == "model name" and v), None) or platform.processor() \
        or platform.machine() or "unknown"


def simd_flags() -> list[str]:
    """Sorted: AVX/AVX2/AVX-512*, FMA, F16C, AMX*, *VNNI* on x86; NEON (asimd*), SVE, I8MM, BF16 on ARM."""
    flags = next((v.split() for k, v in _cpuinfo() if k in ("flags", "Features")), [])
    return sorted(f for f in flags if f in ("avx", "avx2", "fma", "f16c") or f.startswith(("avx512", "amx"))
                  or "vnni" in f or f in ARM_SIMD)


def describe() -> str:
    """One line: ``<model>; flags: <flags>``."""
    return f"{cpu_model()}; flags: {' '.join(simd_flags()) or '-'}"


if __name__ == "__main__":
    print(describe())
